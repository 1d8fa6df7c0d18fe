"""Evaluate a run: `python -m mode_jax.eval --gin_file=... --gin_bindings=...`.

Restores the adapters of the latest (or a given) checkpoint of MODEL_DIR onto
the base, greedy-decodes the held-out instances and writes ROUGE-L and exact
match (overall, per task, per category) to `<MODEL_DIR>/eval/` as JSON and
TensorBoard; `python -m mode_jax.infer` also writes the predictions as JSONL.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

import gin
import jax

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import evaluation
from mode_jax import experiment
from mode_jax import files
from mode_jax import launch
from mode_jax import metrics_log
from mode_jax import sharding
from mode_jax import trainer


@gin.configurable
def evaluate(*, model_dir: str = gin.REQUIRED, model: Any = gin.REQUIRED,
             task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
             sni_dir: str = gin.REQUIRED,
             adapter: adapters_lib.AdapterConfig | None = None,
             base_checkpoint: str | None = None, sni: Any = None,
             vocab_path: str | None = None, allow_missing: bool | None = None,
             tasks: Any = None, split: str = "validation", checkpoint_step: int | None = None,
             batch_size: int = 16, max_decode_len: int = 64,
             mesh: sharding.MeshConfig = sharding.MeshConfig(),
             predictions_file: str | None = None, seed: int = 0) -> dict:
  """Decodes and scores; returns the grouped metrics.

  Args:
    model_dir: run directory (MODEL_DIR) with checkpoints; with adapter=None
      the base model alone is evaluated.
    tasks: SNI task names (default: the registered train-split tasks for
      split="validation", the test-split tasks for split="test").
    allow_missing: accept a partial SNI copy; None (default): the choice of
      the training run in model_dir (its operative config), else False.
    predictions_file: write per-example JSONL here (relative to model_dir).
  """
  launch.check_arguments(evaluate, locals())  # Settings first, before any heavy work.
  launch.check_feature_lengths(task_feature_lengths)
  from mode_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  from mode_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from mode_jax.data import vocab  # pylint: disable=g-import-not-at-top
  if not files.isdir(sni_dir):
    raise FileNotFoundError(f"SNI_DIR {sni_dir!r} is not a directory")
  sni = sni or data_config.SniConfig(max_input_tokens=task_feature_lengths["inputs"])
  if allow_missing is None:
    allow_missing = training_allow_missing(model_dir)
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
  if tasks is None:
    reg = tasks_lib.register_sni(sni_dir, sni, vocab_path=vocab_path,
                                 allow_missing=allow_missing, case_study=False, test=False,
                                 split="test" if split == "test" else "train")
    tasks = reg.selected
  examples = tasks_lib.eval_examples(sni_dir, list(tasks), sni, split=split,
                                     vocab_path=vocab_path, allow_missing=allow_missing)
  ev = evaluation.Evaluator(examples, vocab.get_vocabulary(vocab_path), graphdef,
                            input_length=task_feature_lengths["inputs"],
                            max_decode_len=max_decode_len, batch_size=batch_size, mesh=mesh_)
  with sharding.use_mesh(mesh_):
    metrics, records = ev.evaluate((params, astate, frozen))
  metrics["step"] = step
  if jax.process_index() == 0:
    files.write_json(files.join(model_dir, "eval", f"{split}_metrics_{step}.json"), metrics)
    if predictions_file:
      files.write_text(files.join(model_dir, predictions_file),
                       "".join(json.dumps(r) + "\n" for r in records))
  log = metrics_log.MetricsLogger(model_dir, f"eval_{split}", console=False)
  log.write(step, {"rougeL": metrics["overall"]["rougeL"],
                   "exact_match": metrics["overall"]["exact_match"],
                   **{f"category/{c}/rougeL": m["rougeL"]
                      for c, m in metrics["per_category"].items()}})
  log.close()
  print(f"[eval step {step}] {split}: rougeL={metrics['overall']['rougeL']:.2f} "
        f"exact_match={metrics['overall']['exact_match']:.2f} on {len(records)} examples",
        flush=True)
  return metrics


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
