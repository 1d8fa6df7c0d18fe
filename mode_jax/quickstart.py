"""The embedded default, end to end on a laptop CPU: `python -m mode_jax.quickstart`.

1. Base: a tiny Gemma-architecture model (4 layers, d_model 128) trained in
   full for a few hundred steps on the bundled SNI sample, so that the frozen
   base is a (weak) language model of this data rather than random noise.
   Its base checkpoint is cached under `~/.cache/mode_jax/` and reused.
2. MoDE adapters trained on the frozen base (`configs/experiments/
   quickstart_tiny.gin`), with periodic checkpoints.
3. Greedy-decode evaluation on the held-out 10% of every task (ROUGE-L,
   exact match), 4. export of the adapters, 5. a results table.

Flags: --gin_file / --gin_bindings as every entry point (defaults to the
quickstart experiment), --base_steps, --model_dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time

from flax import nnx

from mode_jax import checkpoints
from mode_jax import experiment
from mode_jax import export as export_lib
from mode_jax import launch
from mode_jax import optim
from mode_jax import sharding
from mode_jax import trainer
from mode_jax import train as train_lib
from mode_jax import eval as eval_lib

DEFAULT_GIN = "experiments/quickstart_tiny.gin"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mode_jax", "quickstart_base")


def _q(name):
  return launch.query(name)


def build_base(model_cfg, mixture: str, lengths: dict, steps: int, batch_size: int,
               out_dir: str, seed: int = 0) -> str:
  """Trains the whole base model (no adapters) and writes a base checkpoint."""
  from mode_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  model = experiment.build_model(model_cfg, None, mesh, seed=seed)
  graphdef, params, astate, frozen = trainer.split_model(model, nnx.Param)
  tx, schedule = optim.make_optimizer(
      optim.OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="cosine",
                            warmup_steps=max(steps // 10, 1), weight_decay=0.01), steps)
  state = trainer.init_state(params, astate, tx)
  data = pipeline.BatchIterator(mixture, lengths, batch_size, split="train", seed=seed + 1)
  t0 = time.time()
  with sharding.use_mesh(mesh):
    step_fn = None
    for step in range(1, steps + 1):
      batch = trainer.place_batch(next(data), mesh)
      if step_fn is None:
        step_fn = trainer.jit_train_step(trainer.make_train_step(graphdef, tx, schedule),
                                         state, frozen, batch, mesh)
      state, metrics = step_fn(state, frozen, batch)
      if step % 50 == 0 or step == steps:
        print(f"[base step {step}/{steps}] loss={float(metrics['loss']):.3f} "
              f"({time.time() - t0:.0f}s)", flush=True)
  model = nnx.merge(graphdef, state["params"], state["adapter_state"], frozen)
  checkpoints.save_base(out_dir, model, source=f"quickstart base: {steps} full-parameter "
                        f"steps on {mixture}")
  return out_dir


def _base_dir(model_cfg, mixture, lengths, steps, batch, sni_dir) -> str:
  key = json.dumps([dataclasses.asdict(model_cfg), mixture, dict(lengths), steps, batch,
                    sorted(os.listdir(os.path.join(sni_dir, "tasks")))], sort_keys=True)
  return os.path.join(CACHE, hashlib.sha256(key.encode()).hexdigest()[:12])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--gin_file", action="append", default=None)
  ap.add_argument("--gin_bindings", action="append", default=[])
  ap.add_argument("--model_dir", default=os.path.join("work_dirs", "quickstart"))
  ap.add_argument("--base_steps", type=int, default=300)
  args = ap.parse_args(sys.argv[1:] if argv is None else argv)
  t0 = time.time()
  bindings = [f"MODEL_DIR = '{args.model_dir}'"] + args.gin_bindings
  launch.parse_gin(args.gin_file or [DEFAULT_GIN], bindings)
  model_cfg = experiment.model_config(_q("train.model"))
  lengths = _q("train.task_feature_lengths")
  sni_dir = _q("train.sni_dir")
  mixture = _q("train.mixture_or_task_name")
  batch = _q("train.batch_size")
  # Registers the SNI tasks (train/eval splits, prompts, vocabulary).
  train_lib.register_data(sni_dir, None, None, True, None, lengths)

  base = _q("train.base_checkpoint")
  if not base:
    base = _base_dir(model_cfg, mixture, lengths, args.base_steps, batch, sni_dir)
    if checkpoints.is_base_checkpoint(base):
      print(f"== base model: cached {base}", flush=True)
    else:
      print(f"== base model: {args.base_steps} full-parameter steps -> {base}", flush=True)
      build_base(model_cfg, mixture, lengths, args.base_steps, batch, base)
  t_base = time.time()

  print("== MoDE adapters on the frozen base", flush=True)
  summary = launch.call_configured(lambda: train_lib.train(base_checkpoint=base))
  t_train = time.time()
  print("== evaluation on held-out instances", flush=True)
  adapter = _q("train.adapter")
  metrics = eval_lib.evaluate(
      model_dir=args.model_dir, model=model_cfg, adapter=adapter,
      task_feature_lengths=lengths, sni_dir=sni_dir, base_checkpoint=base,
      allow_missing=True, predictions_file="predictions.jsonl")
  print("== the frozen base alone, same evaluation", flush=True)
  base_metrics = eval_lib.evaluate(
      model_dir=os.path.join(args.model_dir, "base_only"), model=model_cfg, adapter=None,
      task_feature_lengths=lengths, sni_dir=sni_dir, base_checkpoint=base, allow_missing=True)
  export_dir = export_lib.export(model_dir=args.model_dir, model=model_cfg, adapter=adapter,
                                 base_checkpoint=base)
  _report(summary, metrics, base_metrics, export_dir, args.model_dir, t0, t_base, t_train)


def _report(summary, metrics, base_metrics, export_dir, model_dir, t0, t_base, t_train):
  p = summary["params"]
  print("\n## Quickstart results (held-out instances of the seen tasks)\n")
  print("| task | base ROUGE-L | MoDE ROUGE-L | MoDE exact match |\n|---|---|---|---|")
  for t, m in metrics["per_task"].items():
    b = base_metrics["per_task"][t]
    print(f"| {t} | {b['rougeL']:.2f} | {m['rougeL']:.2f} | {m['exact_match']:.2f} |")
  o, bo = metrics["overall"], base_metrics["overall"]
  print(f"| **overall** ({metrics['num_examples']} examples) | {bo['rougeL']:.2f} | "
        f"**{o['rougeL']:.2f}** | **{o['exact_match']:.2f}** |\n")
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
