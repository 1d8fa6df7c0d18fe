"""What a run directory holds, and whether a sweep point is finished.

A finished point has `train_summary.json` (written by `mode_jax.train` at
the end) and at least one `eval/validation_metrics_<step>.json` (written by
`mode_jax.eval`). The sweep also writes `point.json` (the Point, its gin
files and bindings) so results and analyses need no gin parsing. Run
directories may be local or in a bucket (gs://): every access goes through
`mode_jax.files`.
"""

from __future__ import annotations

import re

from mode_jax import files

POINT_FILE = "point.json"
SUMMARY_FILE = "train_summary.json"
TIMES_FILE = "sweep_times.json"


def eval_files(model_dir: str, split: str = "validation") -> dict[int, str]:
  """{step: path} of the run's evaluation metrics files."""
  out = {}
  eval_dir = files.join(model_dir, "eval")
  paths = files.glob(eval_dir, f"{split}_metrics_*.json") if files.isdir(eval_dir) else []
  for path in paths:
    m = re.search(rf"{split}_metrics_(\d+)\.json$", path)
    if m:
      out[int(m.group(1))] = path
  return out


def train_done(model_dir: str) -> bool:
  return files.exists(files.join(model_dir, SUMMARY_FILE))


def eval_done(model_dir: str) -> bool:
  return bool(eval_files(model_dir))


def is_finished(model_dir: str) -> bool:
  """Train summary and evaluation metrics are both present."""
  return train_done(model_dir) and eval_done(model_dir)


read_json = files.read_json
write_json = files.write_json


def latest_eval(model_dir: str, split: str = "validation") -> dict | None:
  """The metrics of the latest evaluated step (None if none)."""
  files = eval_files(model_dir, split)
  return read_json(files[max(files)]) if files else None


def find_runs(root: str) -> list[str]:
  """Run directories under `root` (any depth): those with point.json or a summary."""
  if not files.isdir(root):
    return []
  found = set()
  for name in (POINT_FILE, SUMMARY_FILE):
    for path in files.glob(root, f"**/{name}"):
      found.add(files.parent(path))
  return sorted(found)


def _from_config_gin(model_dir: str) -> dict:
  """Adapter fields parsed from the operative config (runs not made by the sweep)."""
  text = ""
  for name in ("config.gin", "config_start.gin"):
    p = files.join(model_dir, name)
    if files.exists(p):
      text = files.read_text(p)
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
  point = read_json(files.join(model_dir, POINT_FILE))
  fields = dict(point["point"]) if point else _from_config_gin(model_dir)
  return {"dir": model_dir, "name": files.basename(model_dir.rstrip("/")),
          "point": fields, "sweep": point or {},
          "summary": read_json(files.join(model_dir, SUMMARY_FILE)),
          "eval": latest_eval(model_dir),
          "times": read_json(files.join(model_dir, TIMES_FILE), {})}
