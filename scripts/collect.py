"""Gather a sweep's metrics into one table (CSV, Markdown) and two plots (PNG).

  python scripts/collect.py work_dirs/cpu_compare            # -> ROOT/results.*
  python scripts/collect.py work_dirs/cpu_compare --out /tmp/report
  python scripts/collect.py gs://bucket/sweeps/gemma_2b      # ROOT and --out may be gs://

Reads every run directory under ROOT (point.json, train_summary.json, the
latest eval/validation_metrics_<step>.json) and writes:
  results.csv / results.md    one row per run: method, m, R, p, trainable
                              parameters, % added, ROUGE-L overall and per
                              category, exact match, steps, wall time
  summary.md                  mean and std of ROUGE-L over seeds per setting
  heatmap_<method>.png        ROUGE-L over experts x rank (methods with m)
  rougeL_vs_params.png        ROUGE-L against % added parameters per method
  pairs_<split>.md            when runs hold per-instance predictions_<split>.jsonl
                              (the study gin writes them): every pair of methods,
                              mean ROUGE-L difference with a paired bootstrap 95% CI
                              and the task win rate with an exact sign test
                              (mode_jax.experiments.study; scripts/study.py adds
                              the unseen tasks, the frozen base and routing)
Runs without metrics yet are listed with empty cells. Seconds, no model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mode_jax import files  # noqa: E402
from mode_jax.experiments import plots  # noqa: E402
from mode_jax.experiments import rundirs  # noqa: E402
from mode_jax.experiments import stats  # noqa: E402
from mode_jax.experiments import study  # noqa: E402
from mode_jax.experiments import tables  # noqa: E402

SUMMARY_COLUMNS = ("label", "lr", "seeds", "trainable", "percent_added", "rougeL_mean",
                   "rougeL_std", "exact_match_mean")


def collect(root: str, out: str | None = None) -> dict:
  """Writes the table files and plots; returns {"rows", "summary", "files"}.

  `root` and `out` may be local or gs://; bucket outputs are written locally
  first (csv and matplotlib want a local file) and uploaded once each.
  """
  out = files.absolute(out or root)
  rows = tables.collect(files.absolute(root))
  summary = tables.mean_over_seeds(rows)
  with tempfile.TemporaryDirectory() as tmp:
    local = out if not files.is_remote(out) else tmp
    os.makedirs(local, exist_ok=True)
    written = {"csv": "results.csv", "md": "results.md", "summary": "summary.md"}
    tables.write_csv(rows, os.path.join(local, written["csv"]))
    with open(os.path.join(local, written["md"]), "w") as f:
      f.write(tables.markdown(rows))
    with open(os.path.join(local, written["summary"]), "w") as f:
      f.write(tables.markdown(summary, SUMMARY_COLUMNS))
    for method in sorted({r["method"] for r in rows if r["m"] is not None}):
      name = f"heatmap_{method}.png"
      if plots.heatmap(rows, os.path.join(local, name), method):
        written[f"heatmap_{method}"] = name
    if plots.versus_params(rows, os.path.join(local, "rougeL_vs_params.png")):
      written["versus_params"] = "rougeL_vs_params.png"
    runs = [rundirs.load_run(d) for d in rundirs.find_runs(root)]
    for split in study.SPLITS:
      methods = study.runs_by_method(runs, split)
      if len(methods) > 1:
        name = f"pairs_{split}.md"
        with open(os.path.join(local, name), "w") as f:
          f.write(study.method_markdown(study.method_rows(methods)) + "\n" +
                  study.pairs_markdown(stats.all_pairs(methods)))
        written[f"pairs_{split}"] = name
    if local != out:
      for name in written.values():
        files.copy(os.path.join(local, name), files.join(out, name))
  return {"rows": rows, "summary": summary,
          "files": {k: files.join(out, v) for k, v in written.items()}}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("root", help="sweep directory (scripts/sweep.py --root)")
  ap.add_argument("--out", default=None, help="output directory (default: ROOT)")
  args = ap.parse_args(argv)
  res = collect(args.root, args.out)
  if not res["rows"]:
    print(f"no runs under {args.root}")
    return 1
  print(tables.markdown(res["summary"], SUMMARY_COLUMNS))
  for k, v in res["files"].items():
    print(f"{k}: {v}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
