"""Export a run's adapters: `python -m mode_jax.export --gin_file=... `.

Writes `<export_dir>/adapters` (an adapter-only Orbax checkpoint: trained
weights and non-trained adapter state) and `<export_dir>/manifest.json`
(method, shapes, parameter counts, step, gin config, base checkpoint). For
LoRA, `merge=True` also writes `<export_dir>/merged_base`: a mode_jax base
checkpoint with W + s * lora_a @ lora_b folded into every adapted kernel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import experiment
from mode_jax import files
from mode_jax import launch
from mode_jax import sharding
from mode_jax import trainer
from mode_jax.layers import linear


@gin.configurable
def export(*, model_dir: str = gin.REQUIRED, model: Any = gin.REQUIRED,
           adapter: adapters_lib.AdapterConfig = gin.REQUIRED,
           base_checkpoint: str | None = None, export_dir: str | None = None,
           checkpoint_step: int | None = None, merge: bool = False,
           mesh: sharding.MeshConfig = sharding.MeshConfig(), seed: int = 0) -> str:
  """Exports the adapters of MODEL_DIR; returns the export directory."""
  export_dir = files.absolute(export_dir or files.join(model_dir, "export"))
  if merge and adapter.kind != "lora":
    raise ValueError(f"merge=True needs a LoRA adapter; {adapter.kind!r} routes per token "
                     "and cannot be folded into the base weights")
  mesh_ = experiment.make_mesh(mesh)
  model_ = experiment.build_model(model, adapter, mesh_, base_checkpoint=base_checkpoint,
                                  seed=seed)
  _, params, astate, _ = trainer.split_model(model_)
  ckpt = checkpoints.RunCheckpointer(model_dir, async_save=False)
  restored = ckpt.restore_adapters(checkpoints.abstract_like(
      {"step": jnp.zeros((), jnp.int32), "params": params, "adapter_state": astate}),
      checkpoint_step)
  config_text = ckpt.restore_config(checkpoint_step)
  ckpt.close()
  nnx.update(model_, restored["params"], restored["adapter_state"])
  adapter_tree = {"params": restored["params"], "adapter_state": restored["adapter_state"]}
  checkpoints.save_adapters(files.join(export_dir, "adapters"), adapter_tree)
  cfg = experiment.model_config(model)
  manifest = {
      "method": dataclasses.asdict(adapter),
      "model": dataclasses.asdict(cfg),
      "step": int(restored["step"]),
      "base_checkpoint": base_checkpoint,
      "shapes": {"/".join(map(str, p)): list(v.shape)
                 for p, v in nnx.state(model_, adapters_lib.ADAPTER).flat_state()},
      "params": adapters_lib.count_params(cfg, adapter),
      "gin_config": config_text,
  }
  if merge:
    merge_lora(model_)
    checkpoints.save_base(files.join(export_dir, "merged_base"), model_,
                          source=f"LoRA merged from {model_dir} step {manifest['step']}")
    manifest["merged_base"] = files.join(export_dir, "merged_base")
  if jax.process_index() == 0:
    files.write_json(files.join(export_dir, "manifest.json"), manifest)
  print(f"exported adapters of step {manifest['step']} to {export_dir}", flush=True)
  return export_dir


def merge_lora(model: nnx.Module) -> None:
  """Folds every LoRA delta into its base kernel, in place (W += s * A @ B)."""
  for _, node in nnx.iter_graph(model):
    if isinstance(node, linear.Projection) and node.adapter is not None:
      ad = node.adapter
      delta = ad.scale * (ad.lora_a[...] @ ad.lora_b[...])
      kernel = node.kernel[...]
      node.kernel[...] = (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)


if __name__ == "__main__":
  launch.parse_and_run(export)
