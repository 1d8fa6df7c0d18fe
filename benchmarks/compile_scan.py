"""Compile time of the train step, looped vs scanned layers, Gemma 2B vs 7B (XLA:CPU).

    nice python benchmarks/compile_scan.py                      # the README table
    python benchmarks/compile_scan.py --layouts scanned --remat full save_dots

Builds each model abstractly (no weights: `jax.ShapeDtypeStruct`s only) with
MoDE 16x4 on q, k, v, o (the paper's adapter), lowers the jitted train step
(`trainer.make_train_step`, AdamW) for abstract batches of BATCH x LENGTH
tokens and compiles it for the host CPU: `jax.jit(step).lower(...)` then
`.compile()`, each timed once (the first compile of a shape; nothing is
cached between rows because every row is a different program; a tiny model
is compiled first so one-time costs stay out of the first row). Prints a
markdown table: lowering and compile seconds, the lowered program's size,
and 7B / 2B ratios. Expect minutes for the looped 7B row on a small CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mode_jax import adapters  # noqa: E402
from mode_jax import models  # noqa: E402
from mode_jax import optim  # noqa: E402
from mode_jax import trainer  # noqa: E402

ADAPTER = adapters.AdapterConfig(kind="mode", rank=4, num_experts=16,
                                 targets=("q", "k", "v", "o"))


def abstract_step(name: str, scan: bool, remat: str, batch: int, length: int):
  """(jitted train step, abstract (state, frozen, batch)) of a named config."""
  cfg = models.get_config(name).replace(scan_layers=scan, remat_policy=remat,
                                        dtype="bfloat16", param_dtype="bfloat16")
  model = models.abstract_model(cfg, ADAPTER)
  graphdef, params, astate, frozen = trainer.split_model(model)
  tx, sched = optim.make_optimizer(optim.OptimizerConfig(name="adamw"), 1000)
  state = jax.eval_shape(lambda p, a: trainer.init_state(p, a, tx), params, astate)
  tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  data = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
          "decoder_loss_weights": jax.ShapeDtypeStruct((batch, length), jnp.float32)}
  step = jax.jit(trainer.make_train_step(graphdef, tx, sched), donate_argnums=(0,))
  return step, (state, frozen, data)


def measure(name: str, scan: bool, remat: str, batch: int, length: int) -> dict:
  step, args = abstract_step(name, scan, remat, batch, length)
  t0 = time.perf_counter()
  lowered = step.lower(*args)
  t1 = time.perf_counter()
  lowered.compile()
  t2 = time.perf_counter()
  return {"lower_s": t1 - t0, "compile_s": t2 - t1, "text_kb": len(lowered.as_text()) / 1024}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--models", nargs="+", default=["gemma_2b", "gemma_7b"])
  ap.add_argument("--remat", nargs="+", default=["full"],
                  help="ModelConfig.remat_policy values to measure")
  ap.add_argument("--layouts", nargs="+", default=["scanned", "looped"],
                  choices=["scanned", "looped"])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--length", type=int, default=1024)
  args = ap.parse_args(argv)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
        f"train step of MoDE 16x4 (q,k,v,o), batch {args.batch} x {args.length}, bfloat16")
  rows = {}
  measure("tiny", True, args.remat[0], 2, 16)  # warm-up: one-time costs out of the first row
  print("| model | layers | remat | lower s | compile s | lowered KiB |\n|---|---|---|---|---|---|")
  for remat in args.remat:
    for scan in [layout == "scanned" for layout in args.layouts]:
      for name in args.models:
        r = measure(name, scan, remat, args.batch, args.length)
        rows[name, scan, remat] = r
        print(f"| {name} | {'scanned' if scan else 'looped'} | {remat} | {r['lower_s']:.1f} | "
              f"{r['compile_s']:.1f} | {r['text_kb']:.0f} |", flush=True)
  if {"gemma_2b", "gemma_7b"} <= set(args.models):
    for remat in args.remat:
      for scan in [layout == "scanned" for layout in args.layouts]:
        a, b = rows["gemma_2b", scan, remat], rows["gemma_7b", scan, remat]
        print(f"7B / 2B ({'scanned' if scan else 'looped'}, remat {remat}): compile "
              f"{b['compile_s'] / a['compile_s']:.2f}x, lower+compile "
              f"{(b['compile_s'] + b['lower_s']) / (a['compile_s'] + a['lower_s']):.2f}x")


if __name__ == "__main__":
  main()
