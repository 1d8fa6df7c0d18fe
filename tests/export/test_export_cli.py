"""`python -m mode_jax.export --format=...` from a run directory, as a user runs it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import checkpoints
from mode_jax import export
from mode_jax import hf_import
from mode_jax import models
from mode_jax import trainer

ACFG = adapters.AdapterConfig(kind="lora", rank=4, targets=("q", "k", "v", "o"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A run directory whose step-3 checkpoint holds random non-zero LoRA weights."""
  d = str(tmp_path_factory.mktemp("run"))
  model = models.abstract_model(models.get_config("tiny"), ACFG)
  _, params, astate, _ = trainer.split_model(model)
  rng = np.random.RandomState(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), params)
  state = dict(trainer.init_state(params, astate, optax.sgd(0.1)), step=jnp.int32(3))
  ckpt = checkpoints.RunCheckpointer(d, async_save=False)
  ckpt.save(3, state, None, "TRAIN_STEPS = 3", force=True)
  ckpt.close()
  return d, nnx.to_pure_dict(params)


def test_peft_from_the_command_line(run, tmp_path):
  run_dir, params = run
  out = str(tmp_path / "peft")
  export.main(["--format=peft", "--gin_file=models/tiny.gin", "--gin_file=adapters/lora.gin",
               "--gin_file=runs/export.gin", f"--gin_bindings=MODEL_DIR = '{run_dir}'",
               f"--gin_bindings=export.export_dir = '{out}'", "--gin_bindings=RANK = 4"])
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["format"] == "peft" and manifest["step"] == 3
  assert manifest["files"] == ["adapter_config.json", "adapter_model.safetensors"]
  acfg, arrays = hf_import.read_peft(out, models.get_config("tiny"))
  assert (acfg.rank, acfg.scale, acfg.targets) == (4, 1.0, ACFG.targets)
  for layer in range(2):
    for t in ACFG.targets:
      saved = params["layers"][layer]["attn"][t]["adapter"]
      for name in ("lora_a", "lora_b"):
        np.testing.assert_array_equal(arrays[f"layers/{layer}/attn/{t}"][name], saved[name])


def test_bad_format_and_merge_combinations(run):
  run_dir, _ = run
  with pytest.raises(SystemExit):  # argparse: invalid choice
    export.main(["--format=onnx", "--gin_file=adapters/lora.gin"])
  with pytest.raises(ValueError, match="merge=True applies to format='orbax'"):
    export.export(model_dir=run_dir, model="tiny", adapter=ACFG, merge=True, format="peft")
  with pytest.raises(ValueError, match="export.format='onnx'; allowed"):
    export.export(model_dir=run_dir, model="tiny", adapter=ACFG, format="onnx")
