"""What a run directory holds, and whether a sweep point is finished.

A finished point has `train_summary.json` (written by `mode_jax.train` at
the end) and at least one `eval/validation_metrics_<step>.json` (written by
`mode_jax.eval`). The sweep also writes `point.json` (the Point, its gin
files and bindings) so results and analyses need no gin parsing.
"""

from __future__ import annotations

import glob
import json
import os
import re

POINT_FILE = "point.json"
SUMMARY_FILE = "train_summary.json"
TIMES_FILE = "sweep_times.json"


def eval_files(model_dir: str, split: str = "validation") -> dict[int, str]:
  """{step: path} of the run's evaluation metrics files."""
  out = {}
  for path in glob.glob(os.path.join(model_dir, "eval", f"{split}_metrics_*.json")):
    m = re.search(rf"{split}_metrics_(\d+)\.json$", path)
    if m:
      out[int(m.group(1))] = path
  return out


def train_done(model_dir: str) -> bool:
  return os.path.exists(os.path.join(model_dir, SUMMARY_FILE))


def eval_done(model_dir: str) -> bool:
  return bool(eval_files(model_dir))


def is_finished(model_dir: str) -> bool:
  """Train summary and evaluation metrics are both present."""
  return train_done(model_dir) and eval_done(model_dir)


def read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)


def latest_eval(model_dir: str, split: str = "validation") -> dict | None:
  """The metrics of the latest evaluated step (None if none)."""
  files = eval_files(model_dir, split)
  return read_json(files[max(files)]) if files else None


def find_runs(root: str) -> list[str]:
  """Run directories under `root` (any depth): those with point.json or a summary."""
  found = set()
  for name in (POINT_FILE, SUMMARY_FILE):
    for path in glob.glob(os.path.join(root, "**", name), recursive=True):
      found.add(os.path.dirname(path))
  return sorted(found)


def _from_config_gin(model_dir: str) -> dict:
  """Adapter fields parsed from the operative config (runs not made by the sweep)."""
  text = ""
  for name in ("config.gin", "config_start.gin"):
    p = os.path.join(model_dir, name)
    if os.path.exists(p):
      text = open(p).read()
      break
  fields = {}
  for key, field in (("kind", "method"), ("rank", "rank"), ("num_experts", "experts"),
                     ("expert_rank", "expert_rank"), ("seed", "seed")):
    m = re.search(rf"^(?:adapters\.AdapterConfig|train)\.{key}\s*=\s*(.+)$", text, re.M)
    if m:
      v = m.group(1).strip().strip("'\"")
      fields[field] = int(v) if v.isdigit() else v
  return fields


def load_run(model_dir: str) -> dict:
  """Everything the tables need: point fields, train summary, latest eval metrics.

  Returns:
    {"dir", "name", "point": {...}, "summary": {...} | None,
     "eval": {...} | None, "times": {...}}
  """
  point = read_json(os.path.join(model_dir, POINT_FILE))
  fields = dict(point["point"]) if point else _from_config_gin(model_dir)
  return {"dir": model_dir, "name": os.path.basename(os.path.normpath(model_dir)),
          "point": fields, "sweep": point or {},
          "summary": read_json(os.path.join(model_dir, SUMMARY_FILE)),
          "eval": latest_eval(model_dir),
          "times": read_json(os.path.join(model_dir, TIMES_FILE), {})}
