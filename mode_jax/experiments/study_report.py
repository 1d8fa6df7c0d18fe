"""The study's report: tables and figures from the run directories of `scripts/study.py`.

Writes ROOT/report/: results.csv / results.md / summary.md (one row per run,
as collect.py), study.md (per-method tables, every pair of methods for seen
and unseen tasks, routing by category), study.json (the same numbers) and
routing_<run>.png (expert load per task and layer of each MoDE run).
"""

from __future__ import annotations

import json
import os
import statistics

from mode_jax.experiments import rundirs
from mode_jax.experiments import study
from mode_jax.experiments import tables

SUMMARY_COLUMNS = ("label", "lr", "seeds", "trainable", "percent_added", "rougeL_mean",
                   "rougeL_std", "exact_match_mean")


def _categories(sni_dir: str, tasks) -> dict[str, str]:
  from mode_jax.data import sni  # pylint: disable=g-import-not-at-top
  return {t: sni.read_header(sni.task_path(sni_dir, t))["Categories"][0] for t in tasks}


def split_section(runs, root: str, split: str, num_resamples: int = 10000) -> dict:
  """Per-method rows and all pairs (with the frozen base) for one split."""
  methods = study.runs_by_method(runs, split)
  base_path = os.path.join(root, "base_only", study.predictions_file(split))
  base = study.instance_scores(base_path) if os.path.exists(base_path) else None
  rows = study.method_rows(methods)
  if base:
    rows += study.method_rows({study.BASE_LABEL: [base]})
  pairs = study.all_pairs_with_base(methods, base, num_resamples=num_resamples) \
      if methods else []
  return {"rows": rows, "pairs": pairs}


def routing_section(runs, sni_dir: str, out_dir: str) -> list[dict]:
  """Category sharing of every MoDE run with routing/routing.json, and its figure."""
  out = []
  for run in runs:
    path = os.path.join(run["dir"], "routing", "routing.json")
    if run["point"].get("method") != "mode" or not os.path.exists(path):
      continue
    with open(path) as f:
      per_task = json.load(f)["per_task"]
    cats = _categories(sni_dir, per_task)
    res = study.category_sharing(per_task, cats)
    res["run"] = run["name"]
    res["figure"] = study.plot_routing(
        per_task, cats, os.path.join(out_dir, f"routing_{run['name']}.png"),
        f"{run['name']}: mean router weight per task (rows, grouped by category) and expert")
    out.append(res)
  return out


def _times(runs) -> dict:
  per = [sum(v for k, v in (r.get("times") or {}).items() if k.endswith("_seconds"))
         for r in runs]
  return {"runs": len(runs), "run_seconds_total": sum(per),
          "run_seconds_mean": statistics.fmean(per) if per else None}


def markdown(report: dict) -> str:
  lines = ["# Study report", ""]
  for split, title in study.SPLITS.items():
    sec = report["splits"].get(split)
    if not sec or not sec["rows"]:
      continue
    lines += [f"## {title}", "", "ROUGE-L x100; mean over seeds of each run's mean over "
              "instances; std over seeds.", "", study.method_markdown(sec["rows"]),
              "Every pair: A - B is the mean over instances (paired by task and id) of the "
              "seed-mean difference; 95% CI: paired percentile bootstrap over instances with "
              "each method's seeds resampled too (10,000 resamples, seed 0); bold: the CI "
              "excludes 0. Task level: per-task means over instances and seeds, ties dropped, "
              "exact two-sided sign test.", "",
              study.pairs_markdown(sec["pairs"]) if sec["pairs"] else "(no pairs yet)\n"]
  if report["routing"]:
    lines += ["## MoDE routing by task category", "",
              "Distance of two tasks: total-variation distance of their mean expert loads, "
              "averaged over the adapted matrices. gap = mean distance across categories - "
              "within a category (> 0: tasks of one category share experts more); p: "
              "permutation test over category labels (5,000 permutations).", "",
              "| run | tasks | same-category pairs | within | across | gap | p |",
              "|---|---|---|---|---|---|---|"]
    for r in report["routing"]:
      lines.append(f"| {r['run']} | {r['tasks']} | {r['same_pairs']} | {r['same']:.4f} | "
                   f"{r['different']:.4f} | {r['gap']:+.4f} | {r['p_value']:.3f} |")
    lines += ["", "Categories with 2+ tasks: " + "; ".join(
        f"{c}: {', '.join(t.split('_')[0] for t in ts)}"
        for c, ts in report["routing"][0]["shared_categories"].items()), ""]
  t = report["times"]
  lines += [f"Runs: {t['runs']}; train + evaluations + routing of the runs: "
            f"{t['run_seconds_total']:.0f} s in all.", ""]
  return "\n".join(lines)


def write(root: str, sni_dir: str, num_resamples: int = 10000) -> dict:
  """Writes the report files under ROOT/report; returns their paths.

  Args:
    root: the study directory.
    sni_dir: the adapters' SNI root (task categories for the routing section).
    num_resamples: bootstrap resamples.
  """
  out_dir = os.path.join(root, "report")
  os.makedirs(out_dir, exist_ok=True)
  dirs = rundirs.find_runs(root)
  runs = [rundirs.load_run(d) for d in dirs]
  rows = tables.collect(dirs)
  tables.write_csv(rows, os.path.join(out_dir, "results.csv"))
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(tables.markdown(rows))
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(tables.markdown(tables.mean_over_seeds(rows), SUMMARY_COLUMNS))
  report = {"splits": {s: split_section(runs, root, s, num_resamples) for s in study.SPLITS},
            "routing": routing_section(runs, sni_dir, out_dir),
            "times": _times(runs)}
  paths = {"markdown": os.path.join(out_dir, "study.md"),
           "json": os.path.join(out_dir, "study.json")}
  with open(paths["markdown"], "w") as f:
    f.write(markdown(report))
  rundirs.write_json(paths["json"], report)
  return paths
