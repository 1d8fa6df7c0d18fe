"""Benchmark: resuming the training data stream at a late step, phase by phase.

Run (from the repository root; one process, niced on a shared machine):

    nice -n 10 python benchmarks/resume_data.py [--steps 100 2000 10000] \
        [--batch_size 16] [--reread_up_to 2000]

On the bundled sample's train mixture (20 tasks, the 1024-piece vocabulary,
inputs 192 + targets 32 as the quickstart), one reference iterator runs to
each step N in turn and saves its tf.data iterator checkpoint there
(`save_checkpoint`). For each N it times, separately:
  build    a new `BatchIterator`'s tf.data pipeline (SeqIO task and mixture
           datasets, feature converter, tf.data graph); the TFRecord cache of
           the tokenized tasks is warm, as on a restart;
  restore  `restore_checkpoint`: reading the saved iterator state into it;
  first    the first batch after the restore;
  re-read  the alternative without iterator state: `restore(state)` rebuilds
           the stream and skips the N consumed batches, to the first batch
           after N. Timed up to `--reread_up_to`; beyond, extrapolated
           linearly from the per-batch rate of the largest timed N (marked ~).
Every restored stream is checked against the reference's next batch. Also
reports the state's size and the save time, each phase's wall and CPU time
(the CPU time is less sensitive to other load), and the load average.
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


class _Clock:
  """Wall and process CPU seconds since the last `lap`."""

  def __init__(self):
    self._t = (time.perf_counter(), time.process_time())

  def lap(self) -> tuple[float, float]:
    t = (time.perf_counter(), time.process_time())
    out, self._t = (t[0] - self._t[0], t[1] - self._t[1]), t
    return out


def _fmt(t: tuple[float, float]) -> str:
  return f"{t[0]:.1f} ({t[1]:.1f})"


def _dir_mb(path: str) -> float:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
             for f in fs) / 2**20


def _check(got: dict, want: dict, what: str) -> None:
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=f"{what}: {k}")


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--sni_dir", default="data/sni_sample")
  ap.add_argument("--steps", type=int, nargs="+", default=[100, 2000, 10000])
  ap.add_argument("--batch_size", type=int, default=16)
  ap.add_argument("--reread_up_to", type=int, default=2000,
                  help="time the re-read up to this step; extrapolate beyond")
  args = ap.parse_args()
  steps = sorted(args.steps)
  work = tempfile.mkdtemp(prefix="resume_data_")
  try:
    reg = tasks.register_sni(args.sni_dir, config.SniConfig(max_input_tokens=LENGTHS["inputs"]),
                             cache_dir=os.path.join(work, "cache"), allow_missing=True,
                             prefix="rsni", case_study=False, test=False)
    kw = dict(mixture_or_task_name=reg.mixtures["train"], task_feature_lengths=LENGTHS,
              batch_size=args.batch_size, seed=0)
    next(pipeline.BatchIterator(**kw))  # prepares the TFRecord cache, untimed
    clock = _Clock()
    fresh = pipeline.BatchIterator(**kw)
    fresh.build()
    t_build0 = clock.lap()
    next(fresh)
    t_fill = clock.lap()
    print(f"{len(reg.tasks)} tasks, batch {args.batch_size}, lengths {LENGTHS}; load average "
          f"{os.getloadavg()[0]:.1f} at start on {os.cpu_count()} CPUs")
    print(f"fresh iterator: build {_fmt(t_build0)} s, first batch (fills the shuffle "
          f"buffers) {_fmt(t_fill)} s  [wall (CPU)]")
    print("| step | examples | build (s) | restore state (s) | first batch (s) | resume total (s)"
          " | re-read total (s) | state (MB) | save (s) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref, at = pipeline.BatchIterator(**kw), 0
    rate = None  # re-read seconds per skipped batch (wall, CPU)
    for n in steps:
      for _ in range(n - at):
        next(ref)
      ckpt_dir = os.path.join(work, f"ckpt_{n}")
      clock.lap()
      ref.save_checkpoint(ckpt_dir)
      t_save = clock.lap()
      state = ref.state()
      want = next(ref)
      at = n + 1

      clock.lap()
      new = pipeline.BatchIterator(**kw)
      new.build()
      t_build = clock.lap()
      new.restore_checkpoint(ckpt_dir)
      t_restore = clock.lap()
      _check(next(new), want, f"iterator checkpoint at {n}")
      t_first = clock.lap()
      total = tuple(a + b + c for a, b, c in zip(t_build, t_restore, t_first))

      if n <= args.reread_up_to:
        clock.lap()
        old = pipeline.BatchIterator(**kw)
        old.restore(state)
        _check(next(old), want, f"re-read to {n}")
        t_old = clock.lap()
        rate = tuple((o - b) / n for o, b in zip(t_old, t_build))
        reread = _fmt(t_old)
      elif rate is not None:
        reread = "~" + _fmt(tuple(b + r * n for b, r in zip(t_build, rate)))
      else:
        reread = "not timed"
      print(f"| {n:,} | {n * args.batch_size:,} | {_fmt(t_build)} | {_fmt(t_restore)} | "
            f"{_fmt(t_first)} | {_fmt(total)} | {reread} | {_dir_mb(ckpt_dir):.1f} | "
            f"{_fmt(t_save)} | {os.getloadavg()[0]:.1f} |", flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
