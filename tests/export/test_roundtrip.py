"""PEFT LoRA back into mode_jax: equal logits, and training continues from it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch
from flax import nnx

from mode_jax import adapters
from mode_jax import convert
from mode_jax import hf_export
from mode_jax import hf_import
from mode_jax import trainer

import export_lib as xl  # pylint: disable=g-bad-import-order


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return xl.hf_base(tmp_path_factory, 2, 2)


@pytest.fixture(scope="module")
def ours_exported(base, tmp_path_factory):
  acfg = adapters.AdapterConfig(kind="lora", rank=4, alpha=12.0, targets=("q", "v", "down"))
  model, acfg = xl.adapted(base, acfg)
  out = str(tmp_path_factory.mktemp("peft"))
  hf_export.write_peft(model, acfg, out)
  return model, out


def test_peft_imports_with_equal_logits(base, ours_exported):
  model, out = ours_exported
  back = hf_import.from_pretrained(base, out)
  assert back.adapter_config.targets == ("q", "v", "down")
  assert back.adapter_config.scale == pytest.approx(3.0)
  toks = xl.tokens(b=2, l=8, seed=6)
  np.testing.assert_allclose(xl.logits(back, toks), xl.logits(model, toks), atol=1e-5, rtol=0)


def test_convert_cli_writes_an_export_that_loads(base, ours_exported, tmp_path):
  model, out = ours_exported
  dst = str(tmp_path / "imported")
  convert.main([out, dst, "--base", base])
  manifest = json.load(open(os.path.join(dst, "manifest.json")))
  assert manifest["method"]["kind"] == "lora" and manifest["source"].startswith("peft:")
  fresh, _ = xl.adapted(base, model.adapter_config, seed=9)  # other adapter values
  hf_import.load_adapters(fresh, dst)
  toks = xl.tokens(b=1, l=6, seed=2)
  np.testing.assert_allclose(xl.logits(fresh, toks), xl.logits(model, toks), atol=1e-5, rtol=0)
  with pytest.raises(SystemExit, match="--base"):
    convert.main([out, str(tmp_path / "x")])


def test_adapter_made_by_peft_itself_imports(base, tmp_path):
  hf = xl.hf_from(base)
  lcfg = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["q_proj", "o_proj", "up_proj"])
  pm = peft.get_peft_model(hf, lcfg)
  with torch.no_grad():
    for name, p in pm.named_parameters():
      if "lora_" in name:
        p.normal_(0.0, 0.3)
  pm.save_pretrained(str(tmp_path / "p"))
  toks = xl.tokens(b=2, l=8, seed=7)
  ref = xl.torch_logits(pm.eval(), toks)
  back = hf_import.from_pretrained(base, str(tmp_path / "p"))
  np.testing.assert_allclose(xl.logits(back, toks), ref, atol=xl.ATOL, rtol=0)


def test_training_continues_from_imported_adapters(base, ours_exported):
  model, out = ours_exported
  back = hf_import.from_pretrained(base, out)
  graphdef, params, astate, frozen = trainer.split_model(back)
  tx = optax.sgd(0.1)
  state = trainer.init_state(params, astate, tx)
  step = jax.jit(trainer.make_train_step(graphdef, tx, lambda s: 0.1))
  toks = jnp.asarray(xl.tokens(b=2, l=8, seed=8))
  batch = {"decoder_input_tokens": toks, "decoder_target_tokens": jnp.roll(toks, -1, 1),
           "decoder_loss_weights": jnp.ones(toks.shape, jnp.float32)}
  before = np.asarray(nnx.to_pure_dict(params)["layers"][0]["attn"]["q"]["adapter"]["lora_b"])
  losses = []
  for _ in range(3):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics["loss"]))
  after = np.asarray(nnx.to_pure_dict(state["params"])["layers"][0]["attn"]["q"]["adapter"][
      "lora_b"])
  np.testing.assert_allclose(before, np.asarray(
      model.layers[0].attn.q.adapter.lora_b[...]), atol=0)
  assert np.abs(after - before).max() > 0 and losses[-1] < losses[0]


def test_unsupported_peft_fields_are_named(base, ours_exported, tmp_path):
  _, out = ours_exported
  bad = tmp_path / "rs"
  os.makedirs(bad)
  cfg = json.load(open(os.path.join(out, "adapter_config.json")))
  (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": True}))
  os.symlink(os.path.join(out, "adapter_model.safetensors"), bad / "adapter_model.safetensors")
  with pytest.raises(ValueError, match="use_rslora=True is not supported"):
    hf_import.from_pretrained(base, str(bad))


def test_bfloat16_peft_weights_read_exactly(base, ours_exported, tmp_path):
  from safetensors import torch as st  # pylint: disable=g-import-not-at-top
  model, out = ours_exported
  bf = tmp_path / "bf16"
  os.makedirs(bf)
  (bf / "adapter_config.json").write_text(open(os.path.join(out, "adapter_config.json")).read())
  tensors = st.load_file(os.path.join(out, "adapter_model.safetensors"))
  st.save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()},
               str(bf / "adapter_model.safetensors"))
  cfg = model.config
  _, want = hf_import.read_peft(out, cfg)
  _, got = hf_import.read_peft(str(bf), cfg)
  for proj, ab in want.items():
    for name, x in ab.items():
      np.testing.assert_array_equal(
          got[proj][name], torch.tensor(x).to(torch.bfloat16).float().numpy())
