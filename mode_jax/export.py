"""Export a run's adapters: `python -m mode_jax.export [--format=F] --gin_file=...`.

Every format writes `<export_dir>/manifest.json` (method, shapes, parameter
counts, step, gin config, base checkpoint, files) beside:
  orbax      (default) `adapters/`, an adapter-only Orbax checkpoint (trained
             weights and non-trained adapter state); for LoRA, `merge=True`
             also writes `merged_base/`, a mode_jax base checkpoint with
             W + s * lora_a @ lora_b folded into every adapted kernel;
  peft       adapter_config.json + adapter_model.safetensors, a PEFT LoRA for
             the transformers Gemma of the same base (hf_export.write_peft);
  hf_merged  a complete HF checkpoint with the deltas folded in: config.json,
             safetensors shards, the base's tokenizer files when known;
  torch      every kind's tensors + JSON for `mode_jax.torch.attach`.
peft and hf_merged need a delta linear in x (LoRA, or one expert).
`--format=F` is the gin binding `export.format = 'F'`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import experiment
from mode_jax import files
from mode_jax import hf_export
from mode_jax import launch
from mode_jax import sharding
from mode_jax import trainer
from mode_jax.layers import linear
from mode_jax.models import build
from mode_jax.models import stacking

FORMATS = ("orbax", "peft", "hf_merged", "torch")
MANIFEST, ADAPTERS = hf_export.MANIFEST, hf_export.ADAPTERS


@gin.configurable
def export(*, model_dir: str = gin.REQUIRED, model: Any = gin.REQUIRED,
           adapter: adapters_lib.AdapterConfig = gin.REQUIRED,
           base_checkpoint: str | None = None, export_dir: str | None = None,
           checkpoint_step: int | None = None, merge: bool = False,
           mesh: sharding.MeshConfig = sharding.MeshConfig(), seed: int = 0,
           format: str = "orbax") -> str:  # pylint: disable=redefined-builtin
  """Exports the adapters of MODEL_DIR in `format` (FORMATS); returns the export directory."""
  export_dir = files.absolute(export_dir or files.join(model_dir, "export"))
  if format not in FORMATS:
    raise ValueError(f"export.format={format!r}; allowed: {FORMATS}")
  if merge and format != "orbax":
    raise ValueError(f"merge=True applies to format='orbax'; format={format!r} "
                     "(use format='hf_merged' for merged HF weights)")
  if format in ("peft", "hf_merged"):
    hf_export.check_linear(adapter)  # before anything is loaded
  if merge and adapter.kind != "lora":
    raise ValueError(f"merge=True needs a LoRA adapter; {adapter.kind!r} routes per token "
                     "and cannot be folded into the base weights")
  mesh_ = experiment.make_mesh(mesh)
  ckpt = checkpoints.RunCheckpointer(model_dir, async_save=False)
  # Built in the layout the checkpoint holds; every format is written looped.
  cfg = experiment.model_config(model)
  cfg = cfg.replace(scan_layers=ckpt.layout(checkpoint_step) == stacking.SCANNED)
  model_ = experiment.build_model(cfg, adapter, mesh_, base_checkpoint=base_checkpoint,
                                  seed=seed)
  _, params, astate, _ = trainer.split_model(model_)
  restored = ckpt.restore_adapters(checkpoints.abstract_like(
      {"step": jnp.zeros((), jnp.int32), "params": params, "adapter_state": astate}),
      checkpoint_step)
  config_text = ckpt.restore_config(checkpoint_step)
  ckpt.close()
  nnx.update(model_, restored["params"], restored["adapter_state"])
  model_ = build.looped(model_)  # the formats address layers by index
  manifest = write(model_, adapter, export_dir, format, step=int(restored["step"]),
                   base_checkpoint=base_checkpoint, config_text=config_text)
  if merge:
    merge_lora(model_)
    checkpoints.save_base(files.join(export_dir, "merged_base"), model_,
                          source=f"LoRA merged from {model_dir} step {manifest['step']}")
    manifest["merged_base"] = files.join(export_dir, "merged_base")
    if jax.process_index() == 0:
      files.write_json(files.join(export_dir, MANIFEST), manifest)
  print(f"exported adapters of step {manifest['step']} as {format} to {export_dir}", flush=True)
  return export_dir


def write(model: nnx.Module, adapter: adapters_lib.AdapterConfig, export_dir: str,
          format: str = "orbax", *, step: int = 0,  # pylint: disable=redefined-builtin
          base_checkpoint: str | None = None, config_text: str = "",
          source: str | None = None) -> dict:
  """Writes the adapters of a loaded `model` in `format` and the manifest; returns it."""
  cfg = model.config
  manifest = {
      "format": format,
      "method": dataclasses.asdict(adapter),
      "model": dataclasses.asdict(cfg),
      "step": step,
      "base_checkpoint": base_checkpoint,
      "shapes": {"/".join(map(str, p)): list(v.shape)
                 for p, v in nnx.state(model, adapters_lib.ADAPTER).flat_state()},
      "params": adapters_lib.count_params(cfg, adapter),
      "gin_config": config_text,
  }
  if source:
    manifest["source"] = source
  if format == "orbax":
    _, params, astate, _ = trainer.split_model(model)
    checkpoints.save_adapters(files.join(export_dir, ADAPTERS),
                              {"params": params, "adapter_state": astate})
  elif format == "peft":
    manifest["files"] = hf_export.write_peft(model, adapter, export_dir, base_checkpoint)
  elif format == "hf_merged":
    manifest["files"] = hf_export.write_merged(model, adapter, export_dir, base_checkpoint)
  elif format == "torch":
    manifest["files"] = hf_export.write_torch(model, adapter, export_dir, step)
  else:
    raise ValueError(f"export format {format!r}; allowed: {FORMATS}")
  if jax.process_index() == 0:
    files.write_json(files.join(export_dir, MANIFEST), manifest)
  return manifest


def merge_lora(model: nnx.Module) -> None:
  """Folds every LoRA delta into its base kernel, in place (W += s * A @ B)."""
  for _, node in nnx.iter_graph(model):
    if isinstance(node, linear.Projection) and node.adapter is not None:
      ad = node.adapter
      delta = ad.scale * (ad.lora_a[...] @ ad.lora_b[...])
      kernel = node.kernel[...]
      node.kernel[...] = (kernel + delta.reshape(kernel.shape)).astype(kernel.dtype)


def main(argv=None):
  """`--format=F` (FORMATS) becomes the binding export.format; the rest goes to gin."""
  ap = argparse.ArgumentParser(add_help=False)
  ap.add_argument("--format", choices=FORMATS, default=None)
  args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
  if args.format:
    rest.append(f"--gin_bindings=export.format = '{args.format}'")
  return launch.parse_and_run(export, rest)


if __name__ == "__main__":
  main()
