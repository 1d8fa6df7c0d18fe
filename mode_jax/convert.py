"""Converts pretrained Gemma weights into a mode_jax base checkpoint.

    python -m mode_jax.convert SRC DST [--model gemma_2b] [--param_dtype bfloat16]
        [--data 1 --fsdp 1 --model_parallel 1]
    python -m mode_jax.convert PEFT_DIR DST --base BASE

The second form imports a PEFT LoRA (adapter_config.json +
adapter_model.safetensors, e.g. from `python -m mode_jax.export
--format=peft`) for the base BASE (any layout below): DST receives what
`export --format=orbax` writes, `adapters/` and `manifest.json`, which
`hf_import.load_adapters(model, DST)` reads back to evaluate or train on.

SRC is a Hugging Face directory (config.json + *.safetensors) or the
official Flax/Orbax release; the config is inferred from the files unless
--model names one. DST receives `params/` and `mode_jax_base.json`, which
`BASE_CHECKPOINT` (checkpoints.restore_base) then loads; the tokenizer.model
next to SRC, if any, is copied beside them. Weights are read sharded on the
given mesh (default: every local device as data-parallel), so the
conversion never holds the full model on one device.
"""

from __future__ import annotations

import argparse

from mode_jax import checkpoints
from mode_jax import export
from mode_jax import files
from mode_jax import hf_import
from mode_jax import sharding
from mode_jax.models import pretrained


def convert(src: str, dst: str, model: str | None = None, param_dtype: str | None = None,
            mesh=None) -> str:
  """Writes the base checkpoint of `src` to `dst`; returns `dst`.

  Args:
    src: pretrained checkpoint directory (Hugging Face or official Flax).
    dst: output directory.
    model: registered config name instead of the inferred config.
    param_dtype: stored parameter dtype (default: the source's).
    mesh: device mesh to load on (default: all devices, data-parallel).
  """
  kind = pretrained.detect_layout(src)
  if kind == pretrained.BASE:
    raise pretrained.PretrainedError(f"{src!r} is already a mode_jax base checkpoint")
  if mesh is None:
    mesh = sharding.make_mesh()
  m = pretrained.from_pretrained(src, None, mesh, model=model, param_dtype=param_dtype)
  checkpoints.save_base(dst, m, source=f"{kind}:{files.absolute(src)}")
  tok = pretrained.tokenizer_path(src)
  if tok is not None:
    files.copy(tok, files.join(dst, pretrained.TOKENIZER))
  return dst


def convert_peft(src: str, dst: str, base: str, model: str | None = None, mesh=None) -> str:
  """Writes the PEFT LoRA of `src`, for base checkpoint `base`, as a mode_jax export."""
  if mesh is None:
    mesh = sharding.make_mesh()
  m = hf_import.from_pretrained(base, src, mesh, model=model)
  export.write(m, m.adapter_config, dst, "orbax", base_checkpoint=base,
               source=f"peft:{files.absolute(src)}")
  return dst


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("src", help="Hugging Face or official Flax/Orbax checkpoint directory, "
                  "or a PEFT LoRA directory (with --base)")
  ap.add_argument("dst", help="output mode_jax base checkpoint (or adapter export) directory")
  ap.add_argument("--base", default=None, help="the base checkpoint of a PEFT LoRA SRC")
  ap.add_argument("--model", default=None, help="registered config name (default: inferred)")
  ap.add_argument("--param_dtype", default=None, choices=("float32", "bfloat16"))
  ap.add_argument("--data", type=int, default=-1)
  ap.add_argument("--fsdp", type=int, default=1)
  ap.add_argument("--model_parallel", type=int, default=1)
  args = ap.parse_args(argv)
  mesh = sharding.make_mesh(args.data, args.fsdp, args.model_parallel)
  if hf_import.is_peft(args.src):
    if not args.base:
      raise SystemExit(f"{args.src!r} is a PEFT adapter: name its base checkpoint with --base")
    convert_peft(args.src, args.dst, args.base, args.model, mesh)
    print(f"wrote {args.dst}: LoRA adapters of {args.src} for base {args.base}")
    return
  convert(args.src, args.dst, args.model, args.param_dtype, mesh)
  cfg = checkpoints.read_base_config(args.dst)
  print(f"wrote {args.dst}: {cfg.name}, {cfg.num_layers} layers, D={cfg.embed_dim}, "
        f"V={cfg.vocab_size}, non-embedding {cfg.non_embedding_params():,} parameters")


if __name__ == "__main__":
  main()
