"""The SNI data path at paper scale: 756 train tasks, tf.data vs Grain loader.

Run (one core, as the issue states its targets; minutes for tf.data at 756):

    taskset -c 0 python benchmarks/sni_scale.py                  # 756 tasks, both loaders
    taskset -c 0 python benchmarks/sni_scale.py --tasks 50 --batches 100 --more 200
    taskset -c 0 python benchmarks/sni_scale.py --loaders grain  # skip tf.data

Builds in a temporary directory (never in the repository) an SNI layout with
the first `--tasks` names of the bundled train split file: each task file
is a real train task of `--source` (round robin) with its instances repeated
under fresh ids up to `--instances` (660: about 500k instances at 756
tasks). It prepares every task once (TFRecords, then the ArrayRecords of
the Grain loader; timed, with the disk used), then measures each loader in
its own process (so peak RSS is that loader's) through `SniDataset.batches`
at 896 + 128, batch 16, unpacked, on the warm cache:

  build + first batch; examples/s over the first `--batches` batches and the
  next `--more`; peak RSS; the size of the saved state
  (`save_checkpoint`); restore time (a new iterator, `restore_checkpoint`,
  and its first batch).

Expect (issue 21, one core, 756 tasks): tf.data 107-124 s to the first
batch, 6 examples/s at first; the Grain loader's target is >= 2,000
examples/s from the first batch and build + first batch within 20 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"inputs": 896, "targets": 128}
PREFIX = "scale"


def build_layout(out: str, source: str, num_tasks: int, instances: int) -> int:
  """Writes the scaled SNI copy under `out`; returns the number of instances."""
  from mode_jax.data import sni  # pylint: disable=g-import-not-at-top
  names = sni.read_split(source, "train")[:num_tasks]
  real = sni.select_tasks(source, "train", None, True, True).names
  os.makedirs(os.path.join(out, "tasks"))
  shutil.copytree(os.path.join(source, "splits"), os.path.join(out, "splits"))
  with open(os.path.join(out, "splits", "default", "train_tasks.txt"), "w") as f:
    f.write("\n".join(names) + "\n")
  total = 0
  for i, name in enumerate(names):
    with open(os.path.join(source, "tasks", real[i % len(real)] + ".json")) as f:
      task = json.load(f)
    base = task["Instances"]
    prefix = name.split("_")[0]
    task["Instances"] = [dict(base[j % len(base)], id=f"{prefix}-{j:06d}")
                         for j in range(instances)]
    total += instances
    with open(os.path.join(out, "tasks", name + ".json"), "w") as f:
      json.dump(task, f)
  return total


def register(layout: str, cache: str, cap):
  from mode_jax.data import config  # pylint: disable=g-import-not-at-top
  from mode_jax.data import tasks  # pylint: disable=g-import-not-at-top
  return tasks.register_sni(layout, config.SniConfig(max_input_tokens=LENGTHS["inputs"]),
                            cache_dir=cache, prefix=PREFIX, case_study=False, test=False,
                            mixing_cap=cap)


def du(path: str, suffix: str = "") -> int:
  """Bytes of the files under `path` whose names end with `suffix`."""
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
             if f.endswith(suffix))


def prepare(layout: str, cache: str, cap) -> dict:
  """Prepares every task (TFRecords, then ArrayRecords): seconds and bytes of each."""
  import seqio  # pylint: disable=g-import-not-at-top
  from mode_jax.data import arrayrecord  # pylint: disable=g-import-not-at-top
  from mode_jax.data import splits  # pylint: disable=g-import-not-at-top
  reg = register(layout, cache, cap)
  stores = [seqio.get_mixture_or_task(t).source for t in reg.tasks]
  t0 = time.perf_counter()
  for i, src in enumerate(stores):
    for split in splits.SPLITS:
      src._store.ensure(split, src._vocabulary)  # pylint: disable=protected-access
    if i % 50 == 0:
      print(f"  tfrecord {i + 1}/{len(stores)} {time.perf_counter() - t0:.0f} s", flush=True)
  tf_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i, src in enumerate(stores):
    arrayrecord.ArrayRecordStore(src._store).ensure(src._vocabulary)  # pylint: disable=protected-access
  ar_s = time.perf_counter() - t0
  return {"tfrecord_s": tf_s, "tfrecord_mb": du(cache, ".tfrecord") / 1e6,
          "arrayrecord_s": ar_s, "arrayrecord_mb": du(cache, ".array_record") / 1e6}


def peak_rss_mb() -> float:
  """This process's peak RSS (VmHWM: ru_maxrss would carry the parent's over exec)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1e3
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def child(args) -> None:
  """One loader in this process: prints one JSON line of measurements."""
  t0 = time.perf_counter()
  import seqio  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from mode_jax import datasets  # pylint: disable=g-import-not-at-top
  from mode_jax.data import tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  imports, rss0 = time.perf_counter() - t0, peak_rss_mb()
  t0 = time.perf_counter()
  register(args.layout, args.cache, args.cap)
  dataset = datasets.SniDataset(loader=args.child)
  spec = datasets.BatchSpec(f"{PREFIX}_train", LENGTHS, args.batch_size, seed=0,
                            pack=args.pack)
  it = dataset.batches(spec)
  next(it)
  first = time.perf_counter() - t0
  print(f"  [{args.child}] build + first batch {first:.1f} s", file=sys.stderr, flush=True)

  cpu = []

  def rate(n):
    start, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
      next(it)
      if (i + 1) % max(1, n // 4) == 0:
        print(f"  [{args.child}] {i + 1}/{n} batches {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)
    cpu.append(n * args.batch_size / (time.process_time() - cpu0))
    return n * args.batch_size / (time.perf_counter() - start)

  first_rate, later_rate = rate(args.batches - 1), rate(args.more)
  ckpt = tempfile.mkdtemp()
  it.save_checkpoint(ckpt, 0)
  state_mb = du(ckpt) / 1e6
  t0 = time.perf_counter()
  it2 = dataset.batches(spec)
  it2.restore_checkpoint(ckpt, 0)
  next(it2)
  restore = time.perf_counter() - t0
  shutil.rmtree(ckpt)
  print(json.dumps({
      "loader": args.child, "build_first_s": first, "ex_s_first": first_rate,
      "ex_s_later": later_rate, "ex_per_cpu_s": cpu, "imports_s": imports,
      "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": rss0,
      "state_mb": state_mb, "restore_s": restore}))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tasks", type=int, default=756)
  p.add_argument("--instances", type=int, default=660, help="instances per task")
  p.add_argument("--batches", type=int, default=100, help="first window (with batch 1)")
  p.add_argument("--more", type=int, default=1000, help="second window")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--loaders", default="tfdata,grain")
  p.add_argument("--pack", action="store_true", help="packed rows (examples/s counts rows)")
  p.add_argument("--cap", type=int, default=None, help="mixing cap (None: none)")
  p.add_argument("--source", default=os.path.join(ROOT, "data", "sni_sample"))
  p.add_argument("--workdir", default=None, help="keep the layout and cache here (reused)")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--layout", default=None, help=argparse.SUPPRESS)
  p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    child(args)
    return
  work = args.workdir or tempfile.mkdtemp(prefix="sni_scale_")
  layout, cache = os.path.join(work, "sni"), os.path.join(work, "cache")
  try:
    if not os.path.isdir(layout):
      t0 = time.perf_counter()
      n = build_layout(layout, args.source, args.tasks, args.instances)
      print(f"layout: {args.tasks} tasks, {n:,} instances in {time.perf_counter() - t0:.0f} s "
            f"under {layout}", flush=True)
    prep = prepare(layout, cache, args.cap)
    print("preparation (one host, all splits, cold where not reused): "
          + ", ".join(f"{k} {v:.1f}" for k, v in prep.items()), flush=True)
    rows = []
    for loader in args.loaders.split(","):
      cmd = [sys.executable, os.path.abspath(__file__), "--child", loader, "--layout", layout,
             "--cache", cache, "--batches", str(args.batches), "--more", str(args.more),
             "--batch_size", str(args.batch_size)] + (["--pack"] if args.pack else []) + (
                 ["--cap", str(args.cap)] if args.cap else [])
      out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
      rows.append(json.loads(out.strip().splitlines()[-1]))
      print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.tasks} tasks, {LENGTHS['inputs']} + {LENGTHS['targets']}, batch "
          f"{args.batch_size}, {'packed (rows/s)' if args.pack else 'unpacked'}, warm cache")
    print("(build + first batch after the imports; peak RSS of the loader's process, "
          "after imports in brackets)")
    print("| loader | build + first batch | ex/s first {} | ex/s next {} | peak RSS | state "
          "| restore |".format(args.batches, args.more))
    print("|---|---|---|---|---|---|---|")
    for r in rows:
      print(f"| {r['loader']} | {r['build_first_s']:.1f} s | {r['ex_s_first']:,.0f} | "
            f"{r['ex_s_later']:,.0f} | {r['peak_rss_mb']:,.0f} MB "
            f"({r['rss_after_imports_mb']:,.0f}) | {r['state_mb'] * 1e3:,.1f} kB | "
            f"{r['restore_s']:.2f} s |")
  finally:
    if not args.workdir:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
