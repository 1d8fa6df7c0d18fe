"""--format=hf_merged: a plain transformers checkpoint with the deltas folded in."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import hf_export
from mode_jax import models

import export_lib as xl  # pylint: disable=g-bad-import-order

# LoRA, and a kind whose delta is also input-independent (one expert).
KINDS = {"lora": adapters.AdapterConfig(kind="lora", rank=4, alpha=2.0,
                                        targets=("q", "o", "gate", "down")),
         "mode_1x4": adapters.AdapterConfig(kind="mode", rank=4, num_experts=1,
                                            targets=("k", "v", "up"))}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  path = xl.hf_base(tmp_path_factory, 2, 2)
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "GemmaTokenizer"}, f)
  return path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_merged_checkpoint_loads_without_adapters(base, kind, tmp_path):
  model, acfg = xl.adapted(base, KINDS[kind])
  out = str(tmp_path / "merged")
  files = hf_export.write_merged(model, acfg, out, base_checkpoint=base, max_shard_bytes=60_000)
  assert "model.safetensors.index.json" in files and "tokenizer_config.json" in files
  assert not any("lora" in n for n in json.load(
      open(os.path.join(out, "model.safetensors.index.json")))["weight_map"])
  toks = xl.tokens(b=2, l=9, seed=4)
  ours = xl.logits(model, toks)
  assert np.abs(ours - xl.torch_logits(xl.hf_from(base), toks)).max() > 1e-2
  np.testing.assert_allclose(xl.torch_logits(xl.hf_from(out), toks), ours, atol=xl.ATOL, rtol=0)
  # ... and it is a base checkpoint mode_jax reads as well.
  np.testing.assert_allclose(xl.logits(models.from_pretrained(out), toks), ours,
                             atol=xl.ATOL, rtol=0)


@pytest.mark.parametrize("gen", [1, 2])
def test_config_written_from_ours_alone(base, gen, tmp_path):
  """No HF source: config.json comes from the ModelConfig alone."""
  if gen == 1:
    base = xl.lib.save_hf(xl.lib.hf_model(1, 1), tmp_path / "gemma1")
  plain = models.from_pretrained(base)
  out = str(tmp_path / "base")
  hf_export.write_merged(plain, None, out)
  src, got = (json.load(open(os.path.join(p, "config.json"))) for p in (base, out))
  for k in ("vocab_size", "hidden_size", "num_key_value_heads", "head_dim", "sliding_window",
            "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
            "layer_types", "model_type"):
    assert got.get(k) == src.get(k), k
  toks = xl.tokens(b=1, l=7)
  np.testing.assert_allclose(xl.torch_logits(xl.hf_from(out), toks),
                             xl.torch_logits(xl.hf_from(base), toks), atol=1e-5, rtol=0)


def test_hf_config_refuses_what_gemma_cannot_express():
  cfg = models.get_config("tiny").replace(attn_logit_softcap=50.0)
  with pytest.raises(ValueError, match="attn_logit_softcap=50.0 has no HF Gemma 1"):
    hf_export.hf_config(cfg, cfg.vocab_size)
  assert hf_export.hf_config(models.get_config("gemma_2b"), 256_000)["vocab_size"] == 256_000


LINEAR = [adapters.AdapterConfig(kind="lora", rank=3, alpha=6.0),
          adapters.AdapterConfig(kind="molora", rank=3, num_experts=1),
          adapters.AdapterConfig(kind="molora_sd", rank=3, num_experts=1, alpha=1.0),
          adapters.AdapterConfig(kind="mode", rank=4, num_experts=1, expert_rank=2),
          adapters.AdapterConfig(kind="flylora", rank=4, top_k=4, alpha=2.0)]
ROUTED = [adapters.AdapterConfig(kind="mode", rank=4, num_experts=2),
          adapters.AdapterConfig(kind="flylora", rank=4, top_k=3),
          adapters.AdapterConfig(kind="smora", rank=4, top_k=4)]


@pytest.mark.parametrize("acfg", LINEAR, ids=lambda c: c.kind)
def test_input_independent_kinds_reduce_to_lora(acfg):
  ad = adapters.make_adapter(acfg, 12, 10, nnx.Rngs(0))
  rng = np.random.RandomState(0)
  for name in ("lora_b", "router"):
    var = getattr(ad, name, None)
    if var is not None:
      var.set_value(jnp.asarray(rng.normal(0, 0.5, var.shape), jnp.float32))
  arrays = {str(p[-1]): np.asarray(v.get_value())
            for p, v in nnx.state(ad, adapters.ADAPTER).flat_state()}
  assert hf_export.is_linear(acfg)
  a, b = hf_export.linear_lora(acfg, arrays)
  x = rng.normal(0, 1, (5, 12)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(ad(jnp.asarray(x))), acfg.scale * x @ a @ b,
                             atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("acfg", ROUTED, ids=lambda c: c.kind)
def test_routed_kinds_have_no_fixed_delta(acfg):
  assert not hf_export.is_linear(acfg)
  with pytest.raises(ValueError, match=f"{acfg.kind!r} .* routes each token"):
    hf_export.check_linear(acfg)
