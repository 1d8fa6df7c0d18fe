"""Per-task ROUGE-L of two runs, the task-level win rate and a one-sided sign test.

  python scripts/compare.py RUN_A RUN_B
  W=work_dirs/cpu_compare
  python scripts/compare.py $W/mode_m8_R4_p1_s0,$W/mode_m8_R4_p1_s1 \
      $W/lora_R34_s0,$W/lora_R34_s1 --markdown

A side may be several run directories joined by commas: its per-task score
is then the mean over them (e.g. over seeds). Each run's latest
eval/validation_metrics_<step>.json is read (`--metric exact_match` for the
other metric).

Statistic (as the paper reports it): A wins a task when its score is higher.
Ties (equal scores, or within --tie_tol) are DROPPED, as in the classical
sign test; n = wins + losses. p-value = P(X >= wins), X ~ Binomial(n, 1/2),
summed exactly: a small p is evidence that A wins more than half the tasks.
Runs in seconds; no model is built.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mode_jax.experiments import rundirs  # noqa: E402
from mode_jax.experiments import stats  # noqa: E402


def per_task(spec: str, metric: str = "rougeL") -> dict[str, float]:
  """{task: score} of one run dir, or the mean over comma-separated run dirs."""
  scores: dict[str, list[float]] = {}
  for d in [s for s in spec.split(",") if s]:
    ev = rundirs.latest_eval(d)
    if ev is None:
      raise SystemExit(f"{d}: no eval/validation_metrics_<step>.json (run mode_jax.eval first)")
    for task, m in ev["per_task"].items():
      scores.setdefault(task, []).append(float(m[metric]))
  return {t: statistics.fmean(v) for t, v in scores.items()}


def report(res: dict, name_a: str, name_b: str, markdown: bool = False) -> str:
  lines = []
  if markdown:
    lines += ["| task | A | B | A - B |", "|---|---|---|---|"]
    for t, (a, b) in res["per_task"].items():
      lines.append(f"| {t} | {a:.2f} | {b:.2f} | {a - b:+.2f} |")
  else:
    for t, (a, b) in res["per_task"].items():
      lines.append(f"{t:70s} {a:7.2f} {b:7.2f} {a - b:+7.2f}")
  lines.append("")
  lines.append(f"A = {name_a}\nB = {name_b}")
  lines.append(f"A wins {res['wins']}, loses {res['losses']}, ties {res['ties']} (dropped); "
               f"win rate {100 * res['win_rate']:.1f}% of n={res['n']}; one-sided sign test "
               f"p = {res['p_value']:.4g}; mean A - B = {res['mean_diff']:+.2f}")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("run_a")
  ap.add_argument("run_b")
  ap.add_argument("--metric", default="rougeL", choices=("rougeL", "exact_match"))
  ap.add_argument("--tie_tol", type=float, default=0.0, help="|A - B| <= tol is a tie")
  ap.add_argument("--markdown", action="store_true")
  args = ap.parse_args(argv)
  res = stats.win_rate(per_task(args.run_a, args.metric), per_task(args.run_b, args.metric),
                       args.tie_tol)
  print(report(res, args.run_a, args.run_b, args.markdown))
  return 0


if __name__ == "__main__":
  sys.exit(main())
