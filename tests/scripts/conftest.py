"""Helpers of the script tests: load scripts/*.py as modules, fake run dirs."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(name: str):
  """scripts/<name>.py as a module (scripts/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      f"scripts_{name}", os.path.join(REPO, "scripts", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def fake_run(model_dir, point: dict, per_task: dict, per_category: dict | None = None,
             trainable: int = 1000, percent: float = 1.0, step: int = 10,
             with_eval: bool = True, with_summary: bool = True) -> str:
  """A run directory as the sweep, train.py and eval.py would leave it."""
  d = str(model_dir)
  os.makedirs(os.path.join(d, "eval"), exist_ok=True)
  with open(os.path.join(d, "point.json"), "w") as f:
    json.dump({"name": os.path.basename(d), "point": point, "gin_files": [], "bindings": []}, f)
  if with_summary:
    with open(os.path.join(d, "train_summary.json"), "w") as f:
      json.dump({"step": step, "seconds": 12.5, "final": {"loss": 1.0},
                 "params": {"trainable": trainable, "percent_of_base": percent}}, f)
  if with_eval:
    overall = sum(per_task.values()) / len(per_task)
    metrics = {"overall": {"rougeL": overall, "exact_match": overall / 2},
               "per_task": {t: {"rougeL": v, "exact_match": v / 2} for t, v in per_task.items()},
               "per_category": {c: {"rougeL": v, "exact_match": 0.0}
                                for c, v in (per_category or {"misc.": overall}).items()},
               "num_examples": 10 * len(per_task), "seconds": 3.0, "step": step}
    with open(os.path.join(d, "eval", f"validation_metrics_{step}.json"), "w") as f:
      json.dump(metrics, f)
  return d


@pytest.fixture
def scripts():
  return load_script
