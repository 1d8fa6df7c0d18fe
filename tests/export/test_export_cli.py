"""`python -m mode_jax.export --format=...` from a run directory, as a user runs it."""

import json
import os

import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest

from mode_jax import adapters
from mode_jax import checkpoints
from mode_jax import experiment
from mode_jax import export
from mode_jax import hf_export
from mode_jax import sharding
from mode_jax import trainer

import export_lib as xl  # pylint: disable=g-bad-import-order

ACFG = adapters.AdapterConfig(kind="lora", rank=4, targets=("q", "k", "v", "o"),
                              a_init_scale=0.3, b_init_scale=0.3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A run directory with a step-3 checkpoint of tiny + LoRA (random base, seed 0)."""
  d = str(tmp_path_factory.mktemp("run"))
  model = experiment.build_model("tiny", ACFG, sharding.MeshConfig().build(), seed=0)
  _, params, astate, _ = trainer.split_model(model)
  state = dict(trainer.init_state(params, astate, optax.sgd(0.1)), step=jnp.int32(3))
  ckpt = checkpoints.RunCheckpointer(d, async_save=False)
  ckpt.save(3, state, {"batches": 3}, "TRAIN_STEPS = 3", force=True)
  ckpt.close()
  return d, model


def _export(run_dir, out, fmt):
  export.main([f"--format={fmt}", "--gin_file=models/tiny.gin", "--gin_file=adapters/lora.gin",
               "--gin_file=runs/export.gin", f"--gin_bindings=MODEL_DIR = '{run_dir}'",
               f"--gin_bindings=export.export_dir = '{out}'", "--gin_bindings=RANK = 4",
               # The same random draws as ACFG, hence the same random tiny base.
               "--gin_bindings=adapters.AdapterConfig.a_init_scale = 0.3",
               "--gin_bindings=adapters.AdapterConfig.b_init_scale = 0.3"])
  return json.load(open(os.path.join(out, "manifest.json")))


def test_peft_and_merged_from_the_command_line(run, tmp_path):
  run_dir, model = run
  manifest = _export(run_dir, str(tmp_path / "peft"), "peft")
  assert manifest["format"] == "peft" and manifest["step"] == 3
  assert manifest["files"] == ["adapter_config.json", "adapter_model.safetensors"]
  merged = _export(run_dir, str(tmp_path / "merged"), "hf_merged")
  assert merged["files"][:2] == ["config.json", "model.safetensors"]
  # The run's random tiny base, written as an HF checkpoint, is PEFT's base.
  hf_export.write_merged(model, None, str(tmp_path / "base"))
  toks = xl.tokens(b=2, l=7)
  ours = xl.logits(model, toks)
  hf = peft.PeftModel.from_pretrained(xl.hf_from(str(tmp_path / "base")), str(tmp_path / "peft"))
  np.testing.assert_allclose(xl.torch_logits(hf, toks), ours, atol=xl.ATOL, rtol=0)
  np.testing.assert_allclose(xl.torch_logits(xl.hf_from(str(tmp_path / "merged")), toks), ours,
                             atol=xl.ATOL, rtol=0)


def test_bad_format_and_merge_combinations(run, tmp_path):
  run_dir, _ = run
  with pytest.raises(SystemExit):  # argparse: invalid choice
    export.main(["--format=onnx", "--gin_file=adapters/lora.gin"])
  with pytest.raises(ValueError, match="merge=True applies to format='orbax'"):
    export.export(model_dir=run_dir, model="tiny", adapter=ACFG, merge=True, format="peft")
