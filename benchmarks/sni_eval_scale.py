"""The cost of a capped periodic evaluation at 756 tasks (decode batches, wall time).

Run (one core, tiny model with random adapters, no training; minutes):

    taskset -c 0 python benchmarks/sni_eval_scale.py                      # 756 tasks, cap 1
    taskset -c 0 python benchmarks/sni_eval_scale.py --tasks 50 --cap 4   # a small size
    taskset -c 0 python benchmarks/sni_eval_scale.py --workdir /tmp/sni756   # keep the layout

Builds the scaled SNI layout of `benchmarks/sni_scale.py` (the first
`--tasks` train-split names, each a real bundled task with `--instances`
instances under fresh ids) in a temporary directory, then runs
`evaluators.DecodeEvaluation(max_examples_per_task=--cap)` through
`SniDataset.eval_examples` (streamed: one task file parsed and one batch of
prompts tokenized at a time) on the tiny model at `--inputs` prompt tokens,
greedy decoding `--decode` tokens, batch `--batch_size`. Prints progress
every `--every` decode batches, then: instances, decode batches, the wall
time of the pass split into reading + prompt fitting and decoding (the first
batch, with its compilation, apart), peak RSS, and what the uncapped
evaluation of the same layout would decode (counted, not decoded).

Expect (this repository's 2-core CPU, 756 tasks, cap 1, batch 16): 756
instances, 48 decode batches, about 90 s for the pass (8 s reading and
prompt fitting, 1.6 s a decode batch), peak RSS about 2.1 GB; the uncapped
split would be 50,191 instances, 3,137 batches (README, "Capped evaluation
at 756 tasks").
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sni_scale  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "data", "vocab", "sni_sample_512.model")  # the tiny model's 512


def uncapped_count(layout: str, names, cfg) -> int:
  """Validation instances of every task (what the full evaluation decodes)."""
  from mode_jax.data import records  # pylint: disable=g-import-not-at-top
  from mode_jax.data import sni  # pylint: disable=g-import-not-at-top
  from mode_jax.data import splits  # pylint: disable=g-import-not-at-top
  return sum(len(splits.split_instances(records.read_task(sni.task_path(layout, t)),
                                        cfg)["validation"]) for t in names)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tasks", type=int, default=756)
  p.add_argument("--instances", type=int, default=660, help="instances per task")
  p.add_argument("--cap", type=int, default=1, help="max_examples_per_task")
  p.add_argument("--inputs", type=int, default=896, help="prompt tokens")
  p.add_argument("--decode", type=int, default=64, help="max_decode_len")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--every", type=int, default=10, help="progress every N decode batches")
  p.add_argument("--source", default=os.path.join(ROOT, "data", "sni_sample"))
  p.add_argument("--workdir", default=None, help="keep the layout here (reused)")
  args = p.parse_args()
  work = args.workdir or tempfile.mkdtemp(prefix="sni_eval_scale_")
  layout = os.path.join(work, "sni")
  try:
    if not os.path.isdir(layout):
      t0 = time.perf_counter()
      n = sni_scale.build_layout(layout, args.source, args.tasks, args.instances)
      print(f"layout: {args.tasks} tasks, {n:,} instances in {time.perf_counter() - t0:.0f} s",
            flush=True)
    run(args, layout, os.path.join(work, "cache"))
  finally:
    if not args.workdir:
      shutil.rmtree(work, ignore_errors=True)


def run(args, layout: str, cache: str) -> None:
  """One capped DecodeEvaluation pass over the layout, timed and counted."""
  t0 = time.perf_counter()
  from mode_jax import adapters  # pylint: disable=g-import-not-at-top
  from mode_jax import datasets  # pylint: disable=g-import-not-at-top
  from mode_jax import evaluators  # pylint: disable=g-import-not-at-top
  from mode_jax import models  # pylint: disable=g-import-not-at-top
  from mode_jax import sharding  # pylint: disable=g-import-not-at-top
  from mode_jax import trainer  # pylint: disable=g-import-not-at-top
  from mode_jax.data import config  # pylint: disable=g-import-not-at-top
  from mode_jax.data import sni  # pylint: disable=g-import-not-at-top
  print(f"imports {time.perf_counter() - t0:.1f} s", flush=True)
  names = sni.read_split(layout, "train")[:args.tasks]
  cfg = config.SniConfig(max_input_tokens=args.inputs)
  mesh = sharding.make_mesh()
  model = models.build_sharded(models.get_config("tiny"), adapters.AdapterConfig(
      kind="mode", rank=4, num_experts=4, b_init_scale=0.1), mesh, seed=0)
  graphdef, params, astate, frozen = trainer.split_model(model)
  dataset = datasets.SniDataset(sni_dir=layout, sni=cfg, vocab_path=VOCAB, cache_dir=cache)
  ctx = evaluators.EvalContext(dataset, graphdef, mesh,
                               {"inputs": args.inputs, "targets": 128})
  t0 = time.perf_counter()
  ev = evaluators.DecodeEvaluation(tasks=names, max_decode_len=args.decode,
                                   batch_size=args.batch_size,
                                   max_examples_per_task=args.cap).build(ctx).evaluator
  build = time.perf_counter() - t0

  decode_s, calls = [], [0]
  decode = ev._decode_batch  # pylint: disable=protected-access
  start = time.perf_counter()

  def timed(states, chunk):
    t = time.perf_counter()
    out = decode(states, chunk)
    decode_s.append(time.perf_counter() - t)
    calls[0] += 1
    if calls[0] % args.every == 0 or calls[0] == 1:
      print(f"  decode batch {calls[0]}: {time.perf_counter() - start:.1f} s "
            f"(decoding {sum(decode_s):.1f} s)", flush=True)
    return out

  ev._decode_batch = timed  # pylint: disable=protected-access
  with sharding.use_mesh(mesh):
    metrics, _ = ev.evaluate((params, astate, frozen))
  wall = time.perf_counter() - start
  t0 = time.perf_counter()
  full = uncapped_count(layout, names, cfg)
  count_s = time.perf_counter() - t0
  n, b = metrics["num_examples"], len(decode_s)
  later = decode_s[1:] or decode_s
  print(f"\n{args.tasks} tasks x {args.instances} instances, cap {args.cap} per task, "
        f"{args.inputs} prompt tokens, decode {args.decode}, batch {args.batch_size}, tiny "
        f"model, one process")
  print("| instances | decode batches | pass wall | reading + fitting | decoding (first "
        "batch with compile) | per later batch | peak RSS |")
  print("|---|---|---|---|---|---|---|")
  print(f"| {n:,} | {b} | {wall:.1f} s | {wall - sum(decode_s):.1f} s | {sum(decode_s):.1f} s "
        f"({decode_s[0]:.1f} s) | {sum(later) / len(later):.2f} s | "
        f"{sni_scale.peak_rss_mb():,.0f} MB |")
  print(f"build (task selection) {build:.1f} s; uncapped: {full:,} validation instances, "
        f"{-(-full // args.batch_size):,} decode batches (about "
        f"{-(-full // args.batch_size) * sum(later) / len(later) / 60:.0f} min of decoding at "
        f"the per-batch time above; counted in {count_s:.1f} s)")


if __name__ == "__main__":
  main()
