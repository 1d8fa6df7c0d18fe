"""Benchmark: resuming the training data stream at a late step.

Run (from the repository root):

    python benchmarks/resume_data.py [--steps 500 2000] [--batch_size 16]

On the bundled sample's train mixture (20 tasks, the 1024-piece vocabulary,
inputs 192 + targets 32 as the quickstart), for each step N it times, to the
first batch after N:
  1. the re-read: `BatchIterator.restore(state)` rebuilds the stream and
     skips the N consumed batches (what resuming cost before per-process
     iterator checkpoints; grows with N);
  2. the iterator checkpoint: `restore_checkpoint` of the tf.data iterator
     state saved at N by `save_checkpoint` (what a restart does now; the
     cost of the saved buffers, not of N);
and checks both give the same next batch. Also reports the saved state's size,
the save time, and the first batch of a fresh iterator (building the SeqIO
pipeline and filling its shuffle buffers: the floor of any restore).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from mode_jax.data import config  # noqa: E402
from mode_jax.data import pipeline  # noqa: E402
from mode_jax.data import tasks  # noqa: E402

LENGTHS = {"inputs": 192, "targets": 32}


def _dir_mb(path: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
             for f in fs) / 2**20


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--sni_dir", default="data/sni_sample")
  ap.add_argument("--steps", type=int, nargs="+", default=[500, 2000])
  ap.add_argument("--batch_size", type=int, default=16)
  args = ap.parse_args()
  work = tempfile.mkdtemp(prefix="resume_data_")
  try:
    reg = tasks.register_sni(args.sni_dir, config.SniConfig(max_input_tokens=LENGTHS["inputs"]),
                             cache_dir=os.path.join(work, "cache"), allow_missing=True,
                             prefix="rsni", case_study=False, test=False)
    kw = dict(mixture_or_task_name=reg.mixtures["train"], task_feature_lengths=LENGTHS,
              batch_size=args.batch_size, seed=0)
    next(pipeline.BatchIterator(**kw))  # prepares the TFRecord cache, untimed
    t0 = time.perf_counter()
    next(pipeline.BatchIterator(**kw))
    t_fresh = time.perf_counter() - t0
    print(f"{len(reg.tasks)} tasks, batch {args.batch_size}, lengths {LENGTHS}; a fresh "
          f"iterator's first batch (step 0, the floor of any restore): {t_fresh:.2f} s")
    print("| step | examples consumed | re-read restore (s) | iterator checkpoint restore (s) "
          "| save (s) | saved state (MB) |")
    print("|---|---|---|---|---|---|")
    for n in args.steps:
      it = pipeline.BatchIterator(**kw)
      for _ in range(n):
        next(it)
      ckpt_dir = os.path.join(work, f"ckpt_{n}")
      t0 = time.perf_counter()
      it.save_checkpoint(ckpt_dir)
      t_save = time.perf_counter() - t0

      t0 = time.perf_counter()
      old = pipeline.BatchIterator(**kw)
      old.restore(it.state())
      first_old = next(old)
      t_old = time.perf_counter() - t0

      t0 = time.perf_counter()
      new = pipeline.BatchIterator(**kw)
      new.restore_checkpoint(ckpt_dir)
      first_new = next(new)
      t_new = time.perf_counter() - t0

      want = next(it)
      for k in want:
        np.testing.assert_array_equal(first_old[k], want[k])
        np.testing.assert_array_equal(first_new[k], want[k])
      print(f"| {n} | {n * args.batch_size:,} | {t_old:.2f} | {t_new:.2f} | {t_save:.2f} | "
            f"{_dir_mb(ckpt_dir):.1f} |", flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
