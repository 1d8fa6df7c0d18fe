"""The results table of a sweep: one row per run, and a mean-over-seeds view.

Columns: name, method, label, m, R, p, lr, seed, trainable parameters, %
added (of the base's non-embedding parameters, from `count_params` as saved
in train_summary.json), ROUGE-L overall and per category, exact match,
steps, train / eval / wall seconds.
"""

from __future__ import annotations

import csv
import math
import statistics
from typing import Iterable, Sequence

from mode_jax.experiments import points as points_lib
from mode_jax.experiments import rundirs

BASE_COLUMNS = ("name", "method", "label", "m", "R", "p", "lr", "seed", "trainable",
                "percent_added", "rougeL", "exact_match", "steps", "train_seconds",
                "eval_seconds", "wall_seconds")


def label(method: str, m, r, p) -> str:
  pretty = points_lib.PRETTY.get(method, method)
  if m in (None, ""):
    return f"{pretty} {r}"
  return f"{pretty} {m}x{r}" if p in (None, "", 1) else f"{pretty} {m}x{r}x{p}"


def row(run: dict) -> dict:
  """One table row from `rundirs.load_run(...)`."""
  pt, summ, ev = run["point"], run["summary"] or {}, run["eval"] or {}
  params = summ.get("params") or {}
  times = run.get("times") or {}
  out = {"name": run["name"], "method": pt.get("method"), "m": pt.get("experts"),
         "R": pt.get("rank"), "p": pt.get("expert_rank"), "lr": pt.get("lr"),
         "seed": pt.get("seed"), "trainable": params.get("trainable"),
         "percent_added": params.get("percent_of_base"),
         "rougeL": (ev.get("overall") or {}).get("rougeL"),
         "exact_match": (ev.get("overall") or {}).get("exact_match"),
         "steps": summ.get("step", ev.get("step")), "train_seconds": summ.get("seconds"),
         "eval_seconds": ev.get("seconds"),
         "wall_seconds": (sum(v for k, v in times.items() if k.endswith("_seconds"))
                          if times else None)}
  out["label"] = label(out["method"], out["m"], out["R"], out["p"])
  for cat, m in sorted((ev.get("per_category") or {}).items()):
    out[f"rougeL/{cat}"] = m.get("rougeL")
  return out


def collect(root_or_dirs) -> list[dict]:
  """Rows of every run under a sweep root (or of the given run dirs)."""
  dirs = rundirs.find_runs(root_or_dirs) if isinstance(root_or_dirs, str) else root_or_dirs
  rows = [row(rundirs.load_run(d)) for d in dirs]
  return sorted(rows, key=lambda r: (str(r["method"]), r["m"] or 0, r["R"] or 0, r["p"] or 0,
                                     r["lr"] or 0, r["seed"] or 0))


def columns(rows: Iterable[dict]) -> list[str]:
  cats = sorted({k for r in rows for k in r if k.startswith("rougeL/")})
  return list(BASE_COLUMNS) + cats


def mean_over_seeds(rows: Sequence[dict]) -> list[dict]:
  """One row per configuration (label and lr): mean and std of ROUGE-L over seeds."""
  groups: dict = {}
  for r in rows:
    groups.setdefault((r["label"], r["lr"]), []).append(r)
  out = []
  for (lab, lr), rs in groups.items():
    vals = [r["rougeL"] for r in rs if r["rougeL"] is not None]
    em = [r["exact_match"] for r in rs if r["exact_match"] is not None]
    out.append({"label": lab, "method": rs[0]["method"], "m": rs[0]["m"], "R": rs[0]["R"],
                "p": rs[0]["p"], "lr": lr, "seeds": len(vals),
                "trainable": rs[0]["trainable"], "percent_added": rs[0]["percent_added"],
                "rougeL_mean": statistics.fmean(vals) if vals else None,
                "rougeL_std": statistics.stdev(vals) if len(vals) > 1 else None,
                "exact_match_mean": statistics.fmean(em) if em else None})
  return out


def _fmt(v) -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return ""
  if isinstance(v, float):
    return f"{v:.2f}"
  if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10000:
    return f"{v:,}"
  return str(v)


def write_csv(rows: Sequence[dict], path: str, cols: Sequence[str] | None = None) -> None:
  cols = list(cols or columns(rows))
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({c: r.get(c) for c in cols})


def markdown(rows: Sequence[dict], cols: Sequence[str] | None = None) -> str:
  """A GitHub Markdown table (floats to 2 decimals, large ints with commas)."""
  cols = list(cols or columns(rows))
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
  return "\n".join(lines) + "\n"
