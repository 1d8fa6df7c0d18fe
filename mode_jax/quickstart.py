"""The embedded default, end to end on a laptop CPU: `python -m mode_jax.quickstart`.

1. Base: a tiny Gemma-architecture model (4 layers, d_model 128) trained in
   full for a few hundred steps on the 26 SNI tasks of BASE_SNI_DIR
   (`data/sni_full_sample/base`), so that the frozen base is a (weak)
   language model of instruction data rather than random noise, and has
   never seen the adapters' tasks. Its base checkpoint is cached under
   `~/.cache/mode_jax/` and reused.
2. MoDE adapters trained on the frozen base on the 27 other tasks of SNI_DIR
   (`configs/experiments/quickstart_tiny.gin`), with periodic checkpoints.
3. Greedy-decode evaluation on the held-out 10% of the adapters' tasks
   (ROUGE-L, exact match), for the adapters and for the frozen base alone,
   4. export of the adapters, 5. a results table.

Flags: --gin_file / --gin_bindings as every entry point (defaults to the
quickstart experiment), --base_steps, --model_dir.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

# A laptop demo: TensorFlow (the data pipeline) probes for CUDA at start-up and
# logs its failure on a CPU-only machine as an error; nothing it logs here is
# actionable. Set TF_CPP_MIN_LOG_LEVEL to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mode_jax import experiment  # noqa: E402
from mode_jax import export as export_lib
from mode_jax import launch
from mode_jax import train as train_lib
from mode_jax import eval as eval_lib
from mode_jax.experiments import base as base_lib

DEFAULT_GIN = base_lib.DEFAULT_GIN

# Warnings that the quickstart replaces by one line of its own: a partial SNI
# copy (logged at every registration).
_PARTIAL_COPY = ("requested tasks are missing", "requested tasks missing",
                 "has no tasks; not registered")


def _q(name):
  return launch.query(name)


def _data_line(sni_dir: str, base_sni_dir: str, adapter_tasks, base_tasks) -> str:
  from mode_jax.data import sni  # pylint: disable=g-import-not-at-top
  listed = len(sni.read_split(sni_dir, "train"))
  return (f"== data: base pretrained on {len(base_tasks)} tasks ({base_sni_dir}), adapters "
          f"on {len(adapter_tasks)} other tasks ({sni_dir}); partial SNI copies: "
          f"{len(base_tasks) + len(adapter_tasks)} of the {listed} train-split tasks present")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--gin_file", action="append", default=None)
  ap.add_argument("--gin_bindings", action="append", default=[])
  ap.add_argument("--model_dir", default=os.path.join("work_dirs", "quickstart"))
  ap.add_argument("--base_steps", type=int, default=base_lib.DEFAULT_BASE_STEPS)
  args = ap.parse_args(sys.argv[1:] if argv is None else argv)
  launch.default_platform()  # libtpu installed, no TPU: the CPU, without libtpu's probe
  t0 = time.time()
  quiet = base_lib.Quiet(_PARTIAL_COPY)  # replaced by the one `== data:` line below
  logging.getLogger().addFilter(quiet)
  try:
    _run(args, t0)
  finally:
    logging.getLogger().removeFilter(quiet)


def _run(args, t0):
  from mode_jax.data import sni  # pylint: disable=g-import-not-at-top
  bindings = [f"MODEL_DIR = '{args.model_dir}'"] + args.gin_bindings
  launch.parse_gin(args.gin_file or [DEFAULT_GIN], bindings)
  model_cfg = experiment.model_config(_q("train.model"))
  lengths = _q("train.task_feature_lengths")
  sni_dir = _q("train.sni_dir")
  base_sni = base_lib.base_sni_dir()
  print(_data_line(sni_dir, base_sni, sni.list_tasks(sni_dir, allow_missing=True),
                   sni.list_tasks(base_sni, allow_missing=True)), flush=True)
  base = _q("train.base_checkpoint") or base_lib.prepared_base(args.base_steps)
  t_base = time.time()

  print("== MoDE adapters on the frozen base", flush=True)
  summary = launch.call_configured(lambda: train_lib.train(base_checkpoint=base))
  t_train = time.time()
  print("== evaluation on held-out instances of the adapters' tasks", flush=True)
  adapter = _q("train.adapter")
  metrics = eval_lib.evaluate(
      model_dir=args.model_dir, model=model_cfg, adapter=adapter,
      task_feature_lengths=lengths, sni_dir=sni_dir, base_checkpoint=base,
      allow_missing=True, predictions_file="predictions.jsonl",
      max_decode_len=lengths["targets"])
  print("== the frozen base alone, same evaluation", flush=True)
  base_metrics = eval_lib.evaluate(
      model_dir=os.path.join(args.model_dir, "base_only"), model=model_cfg, adapter=None,
      task_feature_lengths=lengths, sni_dir=sni_dir, base_checkpoint=base, allow_missing=True,
      max_decode_len=lengths["targets"])
  export_dir = export_lib.export(model_dir=args.model_dir, model=model_cfg, adapter=adapter,
                                 base_checkpoint=base)
  _report(summary, metrics, base_metrics, export_dir, args.model_dir, t0, t_base, t_train)


def _report(summary, metrics, base_metrics, export_dir, model_dir, t0, t_base, t_train):
  p = summary["params"]
  print("\n## Quickstart results (held-out instances of the adapters' tasks, which the base "
        "never saw)\n")
  print("| task | base ROUGE-L | MoDE ROUGE-L | MoDE exact match |\n|---|---|---|---|")
  for t, m in metrics["per_task"].items():
    b = base_metrics["per_task"][t]
    print(f"| {t} | {b['rougeL']:.2f} | {m['rougeL']:.2f} | {m['exact_match']:.2f} |")
  o, bo = metrics["overall"], base_metrics["overall"]
  print(f"| **overall** ({metrics['num_examples']} examples) | {bo['rougeL']:.2f} | "
        f"**{o['rougeL']:.2f}** | **{o['exact_match']:.2f}** |\n")
  better = sum(m["rougeL"] > base_metrics["per_task"][t]["rougeL"]
               for t, m in metrics["per_task"].items())
  print(f"MoDE above the frozen base on {better} of {len(metrics['per_task'])} tasks")
  final = summary["final"]
  print(f"trainable parameters: {p['trainable']:,} ({p['percent_of_base']:.2f}% of the base's "
        f"non-embedding parameters)")
  if final:
    print(f"train: {summary['step']} steps, {final['steps_per_sec']:.2f} steps/s, "
          f"final loss {final['loss']:.3f}")
  else:  # the run directory already held the final checkpoint
    print(f"train: {summary['step']} steps, already complete in {model_dir} (delete it or pass "
          "--model_dir to train again)")
  print(f"time: base {t_base - t0:.0f}s, adapters {t_train - t_base:.0f}s, "
        f"total {time.time() - t0:.0f}s")
  print(f"checkpoints: {summary['checkpoint_dir']} (step {summary['latest_checkpoint']})")
  print(f"exported adapters: {export_dir}")
  print(f"predictions: {os.path.join(model_dir, 'predictions.jsonl')}")


if __name__ == "__main__":
  main()
