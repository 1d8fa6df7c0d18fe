"""Benchmark of the SNI data pipeline on CPU.

Run (one CPU core, as the target is stated):

    taskset -c 0 python benchmarks/data_pipeline.py [--sni_dir data/sni_sample]

Measures:
  1. preparation (parse, prompts, tokenize, TFRecord) of every train task
     found, once, cold;
  2. examples per second from the train mixture to feature-converted numpy
     batches (total length 1024 = inputs 896 + targets 128, tiny 1024-piece
     vocabulary), unpacked and packed; target >= 2,000 examples/s;
  3. registering all tasks and building the mixture rates at the scale of
     the full benchmark: a synthetic SNI copy with 756 train tasks (copies of
     the sample files under new names), cold (parses every file once for the
     counts) and warm (counts cached);
  4. the cost of `BatchIterator.restore` after N batches.
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

import tensorflow as tf  # noqa: E402

tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.threading.set_intra_op_parallelism_threads(1)

import seqio  # noqa: E402

from mode_jax.data import config  # noqa: E402
from mode_jax.data import pipeline  # noqa: E402
from mode_jax.data import tasks  # noqa: E402

LENGTHS = {"inputs": 896, "targets": 128}


def throughput(name: str, pack: bool, batch_size: int, seconds: float,
               cache_in_memory: bool) -> tuple[float, float, float]:
  """(examples/s, rows/s, examples per CPU-second) of a training BatchIterator.

  The CPU-second figure is less sensitive to other load on a shared machine.
  """
  it = pipeline.BatchIterator(name, LENGTHS, batch_size, seed=0, pack=pack,
                              cache_in_memory=cache_in_memory)
  for _ in range(5):  # Warm-up: graph building, in-memory caches, shuffle buffers.
    next(it)
  rows = examples = 0
  cpu = time.process_time()
  start = time.perf_counter()
  while time.perf_counter() - start < seconds:
    b = next(it)
    rows += batch_size
    if pack:  # Examples are the distinct non-zero segments of each row.
      seg = b["decoder_segment_ids"]
      examples += int(sum(len(set(r[r > 0].tolist())) for r in seg))
    else:
      examples += batch_size
  dt = time.perf_counter() - start
  dcpu = time.process_time() - cpu
  return examples / dt, rows / dt, examples / dcpu


def synthetic_copy(src: str, dst: str, n: int) -> None:
  """An SNI layout with `n` train tasks made of renamed copies of the sample's."""
  files = sorted(f for f in os.listdir(os.path.join(src, "tasks")) if f.endswith(".json"))
  os.makedirs(os.path.join(dst, "tasks"))
  os.makedirs(os.path.join(dst, "splits", "default"))
  names = []
  for i in range(n):
    name = f"task{20000 + i}_synthetic_{i}"
    shutil.copy(os.path.join(src, "tasks", files[i % len(files)]),
                os.path.join(dst, "tasks", name + ".json"))
    names.append(name)
  for split, content in (("train", names), ("test", []), ("excluded", [])):
    with open(os.path.join(dst, "splits", "default", f"{split}_tasks.txt"), "w") as f:
      f.write("".join(n + "\n" for n in content))


def registration_scale(src: str, work: str, n: int = 756) -> dict:
  """Seconds to register n tasks and build the mixture rates, cold and warm."""
  dst = os.path.join(work, "synthetic")
  synthetic_copy(src, dst, n)
  cache = os.path.join(work, "cache_synth")
  out = {}
  for phase in ("cold", "warm"):
    t0 = time.perf_counter()
    reg = tasks.register_sni(dst, cache_dir=cache, prefix=f"syn_{phase}", case_study=False,
                             test=False)
    t1 = time.perf_counter()
    mix = seqio.get_mixture_or_task(reg.mixtures["train"])
    total = sum(mix.get_rate(t) for t in mix.tasks)
    t2 = time.perf_counter()
    out[phase] = (len(reg.tasks), t1 - t0, t2 - t1, total)
  mb = sum(os.path.getsize(os.path.join(dst, "tasks", f))
           for f in os.listdir(os.path.join(dst, "tasks"))) / 1e6
  out["mb"] = mb
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sni_dir", default=os.path.join("data", "sni_sample"))
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--batch_size", type=int, default=32)
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="mode_jax_bench_")
  try:
    cfg = config.SniConfig(max_input_tokens=LENGTHS["inputs"])
    t0 = time.perf_counter()
    reg = tasks.register_sni(args.sni_dir, cfg=cfg, cache_dir=os.path.join(work, "cache"),
                             allow_missing=True, prefix="bench", case_study=False,
                             test=False)
    t_reg = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_ex = 0
    for name in reg.tasks:
      src = seqio.get_mixture_or_task(name).source
      src.list_shards("train")  # Prepares all splits of the task.
      n_ex += sum(src.num_input_examples(s) for s in ("train", "validation", "test"))
    t_prep = time.perf_counter() - t0
    print(f"sample: {len(reg.tasks)} train tasks ({len(reg.missing)} of the split missing)")
    print(f"register: {t_reg:.3f} s; prepare (cold, {n_ex} examples, all splits): "
          f"{t_prep:.2f} s = {n_ex / t_prep:.0f} examples/s")
    for mem in (False, True):
      for pack in (False, True):
        ex_s, rows_s, ex_cpu = throughput(reg.mixtures["train"], pack, args.batch_size, args.seconds,
                                  mem)
        print(f"throughput pack={pack} cache_in_memory={mem}: {ex_s:.0f} examples/s "
              f"({rows_s:.0f} rows/s of 1024 tokens, batch {args.batch_size}; "
              f"{ex_cpu:.0f} examples per CPU-second)")
    kw = dict(mixture_or_task_name=reg.mixtures["train"], task_feature_lengths=LENGTHS,
              batch_size=args.batch_size, seed=0)
    it = pipeline.BatchIterator(**kw)
    it.restore({"batches": 500})
    t0 = time.perf_counter()
    next(it)
    print(f"restore after 500 batches ({500 * args.batch_size} examples): "
          f"{time.perf_counter() - t0:.2f} s to the first batch")
    scale = registration_scale(args.sni_dir, work)
    for phase in ("cold", "warm"):
      n, t_r, t_m, total = scale[phase]
      print(f"scale {phase}: {n} tasks registered in {t_r:.2f} s; mixture rates built in "
            f"{t_m:.2f} s ({total:.0f} train examples)")
    cold_parse = scale["cold"][2]
    print(f"  synthetic copy {scale['mb']:.1f} MB: count parse {scale['mb'] / cold_parse:.0f} "
          "MB/s on this core (cold rates are bound by JSON parsing; the full SNI task files "
          "scale with their size, cached after the first run)")
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
