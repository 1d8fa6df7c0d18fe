"""Evaluate a run: `python -m mode_jax.eval --gin_file=... --gin_bindings=...`.

Restores the adapters of the latest (or a given) checkpoint of MODEL_DIR onto
the base, greedy-decodes the held-out instances and writes ROUGE-L and exact
match (overall, per task, per category) to `<MODEL_DIR>/eval/` as JSON and
TensorBoard; `python -m mode_jax.infer` also writes the predictions as JSONL.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Sequence

import gin
import jax

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import datasets
from mode_jax import evaluators as evaluators_lib
from mode_jax import experiment
from mode_jax import files
from mode_jax import launch
from mode_jax import metrics_log
from mode_jax import sharding
from mode_jax import trainer


@gin.configurable
def evaluate(*, model_dir: str = gin.REQUIRED, model: Any = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             sni_dir: str | None = None,
             adapter: adapters_lib.AdapterConfig | None = None,
             base_checkpoint: str | None = None, sni: Any = None,
             vocab_path: str | None = None, allow_missing: bool | None = None,
             tasks: Any = None, split: str = "validation", checkpoint_step: int | None = None,
             batch_size: int = 16, max_decode_len: int = 64,
             max_examples_per_task: int | None = None,
             mesh: sharding.MeshConfig = sharding.MeshConfig(),
             predictions_file: str | None = None, seed: int = 0,
             dataset: Any = None, evaluators: Sequence[Any] | None = None,
             mixture_or_task_name: str = "sni_train") -> dict:
  """Runs the evaluators on a run's checkpoint; returns the decoding metrics.

  Args:
    model_dir: run directory (MODEL_DIR) with checkpoints; with adapter=None
      the base model alone is evaluated.
    sni_dir: SNI root (SNI_DIR) of the default dataset (required without
      `dataset`).
    tasks: SNI task names (default: the registered train-split tasks for
      split="validation", the test-split tasks for split="test").
    allow_missing: accept a partial SNI copy; None (default): the choice of
      the training run in model_dir (its operative config), else False.
    sni: data.SniConfig of the prompts and the held-out split; None
      (default): the training run's (model_dir/sni_config.json, written by
      train), else the defaults with the inputs budget of
      TASK_FEATURE_LENGTHS. A prompt budget other than training's would feed
      the model prompts cut where it never saw them cut.
    max_examples_per_task: decode at most this many instances of each task,
      chosen by seeded hashes of their ids (the official SNI evaluation:
      100); None (default): all, the full evaluation.
    predictions_file: write per-example JSONL here (relative to model_dir).
    dataset: a `datasets.Dataset`; None: `datasets.SniDataset` of sni_dir,
      sni, vocab_path and allow_missing.
    evaluators: evaluator configs (`evaluators.DecodeEvaluation`,
      `evaluators.ValidationLoss`, ...); None: one DecodeEvaluation of
      tasks, split, max_decode_len, batch_size and max_examples_per_task
      above.
    mixture_or_task_name: what `dataset.prepare` registers and what a
      ValidationLoss reads by default.

  Returns:
    The decoding evaluator's metrics (overall, per task, per category),
    "step", and the metrics of every other evaluator under its name (e.g.
    "loss", also written to `eval/<split>_loss_<step>.json`).
  """
  launch.check_arguments(evaluate, locals())  # Settings first, before any heavy work.
  launch.check_feature_lengths(task_feature_lengths)
  if dataset is None:
    if sni_dir is None:
      raise SystemExit("missing required gin value(s): evaluate.sni_dir (macro SNI_DIR), "
                       "or bind evaluate.dataset")
    if not files.isdir(sni_dir):
      raise FileNotFoundError(f"SNI_DIR {sni_dir!r} is not a directory")
    if allow_missing is None:
      allow_missing = training_allow_missing(model_dir)
    if sni is None:  # the training run's prompts and held-out split
      sni = datasets.run_sni_config(model_dir, task_feature_lengths)
    dataset = datasets.SniDataset(sni_dir=sni_dir, sni=sni, vocab_path=vocab_path,
                                  allow_missing=allow_missing)
  dataset = datasets.check_dataset(dataset, "evaluate.dataset")
  if evaluators is None:
    evaluators = [evaluators_lib.DecodeEvaluation(tasks=tasks, split=split,
                                                  max_decode_len=max_decode_len,
                                                  batch_size=batch_size,
                                                  max_examples_per_task=max_examples_per_task)]
  elif any(isinstance(e, evaluators_lib.ValidationLoss) for e in evaluators):
    dataset.prepare(mixture_or_task_name, task_feature_lengths)  # what the loss reads
  mesh_ = experiment.make_mesh(mesh)
  sharding.check_decode_batch(batch_size, mesh_, "evaluate.batch_size")
  model_ = experiment.build_model(model, adapter, mesh_, base_checkpoint=base_checkpoint,
                                  seed=seed)
  graphdef, params, astate, frozen = trainer.split_model(model_)
  step = 0
  if adapter is not None:
    ckpt = checkpoints.RunCheckpointer(model_dir, async_save=False)
    restored = ckpt.restore_adapters(checkpoints.abstract_like(
        {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params,
         "adapter_state": astate}), checkpoint_step)
    params, astate, step = restored["params"], restored["adapter_state"], int(restored["step"])
    ckpt.close()
  evals = evaluators_lib.build_all(evaluators, evaluators_lib.EvalContext(
      dataset, graphdef, mesh_, dict(task_feature_lengths), mixture_or_task_name))
  result = {}
  for ev in evals:
    with sharding.use_mesh(mesh_):
      metrics, records = ev.evaluate((params, astate, frozen))
    metrics["step"] = step
    if ev.name == "decode":
      _write_decode(model_dir, split, step, metrics, records, predictions_file)
      result.update(metrics)
    else:
      result[ev.name] = metrics
      if jax.process_index() == 0:
        files.write_json(files.join(model_dir, "eval", f"{split}_{ev.name}_{step}.json"),
                         metrics)
    values, console = ev.scalars(metrics)
    log = metrics_log.MetricsLogger(model_dir, f"eval_{split}", console=False)
    log.write(step, values)  # the evaluators' scalar names do not collide
    log.close()
    print(f"[eval step {step}] {split} {ev.name}: "
          + " ".join(f"{k}={values[k]:.4g}" for k in console), flush=True)
  result["step"] = step
  return result


def _write_decode(model_dir, split, step, metrics, records, predictions_file) -> None:
  """The decoding metrics JSON and the predictions JSONL (process 0)."""
  if jax.process_index() != 0:
    return
  files.write_json(files.join(model_dir, "eval", f"{split}_metrics_{step}.json"), metrics)
  if predictions_file:
    files.write_text(files.join(model_dir, predictions_file),
                     "".join(json.dumps(r) + "\n" for r in records))


def training_allow_missing(model_dir: str) -> bool:
  """`train.allow_missing` of the run in model_dir (False without a run config)."""
  for name in ("config.gin", "config_start.gin"):
    path = files.join(model_dir, name)
    if files.exists(path):
      m = re.search(r"^train\.allow_missing\s*=\s*(True|False)\s*$", files.read_text(path),
                    re.MULTILINE)
      return bool(m) and m.group(1) == "True"
  return False


if __name__ == "__main__":
  launch.parse_and_run(evaluate)
