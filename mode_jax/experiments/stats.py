"""Method comparisons: paired bootstrap over instances, task win rates, sign tests.

Instance level: `paired_bootstrap` (mean ROUGE-L difference with a percentile
95% CI, instances paired across methods by (task, id), seeds resampled or
averaged). Task level: `win_rate` and the exact binomial sign test, as the
paper reports it. `all_pairs` does both for every pair of methods.

Rule for ties: a task where both runs score exactly the same ROUGE-L (within
`tie_tol`) is dropped, as in the classical sign test; the win rate and the
test use the remaining n = wins + losses tasks. Tasks present in only one
run are ignored (and counted in `unpaired`).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def binom_tail(k: int, n: int, p: float = 0.5) -> float:
  """P(X >= k) for X ~ Binomial(n, p), summed exactly (integers, then one division)."""
  if n < 0 or not 0 <= p <= 1:
    raise ValueError(f"need n >= 0 and 0 <= p <= 1, got n={n}, p={p}")
  if k <= 0:
    return 1.0
  if k > n:
    return 0.0
  if p == 0.5:  # exact in integers: sum of C(n, i) / 2^n
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n
  return math.fsum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def win_rate(a: Mapping[str, float], b: Mapping[str, float], tie_tol: float = 0.0) -> dict:
  """Task-level comparison of run A against run B.

  Args:
    a: {task: score} of run A (e.g. per-task ROUGE-L).
    b: {task: score} of run B.
    tie_tol: |a - b| <= tie_tol counts as a tie (dropped).

  Returns:
    {"wins", "losses", "ties", "n" (= wins + losses), "unpaired",
     "win_rate" (wins / n, NaN if n = 0), "p_value" (one-sided
     P(X >= wins), X ~ Bin(n, 1/2): evidence that A wins more than half),
     "mean_diff" (mean of a - b over paired tasks), "per_task": {task: (a, b)}}
  """
  paired = sorted(set(a) & set(b))
  wins = sum(1 for t in paired if a[t] - b[t] > tie_tol)
  losses = sum(1 for t in paired if b[t] - a[t] > tie_tol)
  ties = len(paired) - wins - losses
  n = wins + losses
  diffs = [a[t] - b[t] for t in paired]
  return {"wins": wins, "losses": losses, "ties": ties, "n": n,
          "unpaired": len(set(a) ^ set(b)),
          "win_rate": wins / n if n else float("nan"),
          "p_value": binom_tail(wins, n) if n else float("nan"),
          "mean_diff": sum(diffs) / len(diffs) if diffs else float("nan"),
          "per_task": {t: (a[t], b[t]) for t in paired}}


def sign_test_two_sided(wins: int, n: int) -> float:
  """Exact two-sided sign test: min(1, 2 min(P(X >= wins), P(X <= wins))), X ~ Bin(n, 1/2)."""
  if n == 0:
    return float("nan")
  return min(1.0, 2.0 * min(binom_tail(wins, n), binom_tail(n - wins, n)))


def paired_bootstrap(a_sn, b_sn, num_resamples: int = 10000, seed: int = 0,
                     resample_seeds: bool = True, level: float = 0.95,
                     chunk: int = 500) -> dict:
  """Mean difference A - B over instances with a paired percentile bootstrap CI.

  Legend: S seeds (runs) of a method, N instances (the same N, in the same
  order, on both sides), B bootstrap resamples.

  Each resample draws the N instances with replacement, the same draw for
  both methods (paired). With `resample_seeds`, it also draws each method's S
  seeds with replacement (independently per method), so the interval holds
  the seed-to-seed (training) variance as well as the instance sampling;
  without it, each instance's score is the mean over the seeds and only
  instances are resampled.

  Args:
    a_sn: [S_a, N] per-seed, per-instance scores of A.
    b_sn: [S_b, N] of B.
    num_resamples: B.
    seed: seed of the resampling (fixed: the same inputs give the same CI).
    resample_seeds: also resample the seeds (two-level bootstrap).
    level: confidence level of the percentile interval.
    chunk: resamples drawn at once (memory chunk x N floats).

  Returns:
    {"mean_diff" (mean over instances of the seed-mean difference),
     "ci_low", "ci_high", "n_instances", "seeds_a", "seeds_b",
     "resample_seeds", "num_resamples"}
  """
  a_sn = np.atleast_2d(np.asarray(a_sn, np.float64))
  b_sn = np.atleast_2d(np.asarray(b_sn, np.float64))
  (sa, n), (sb, nb) = a_sn.shape, b_sn.shape
  if n != nb or n == 0 or sa == 0 or sb == 0:
    raise ValueError(f"need [S, N] scores with the same N > 0 on both sides, got "
                     f"{a_sn.shape} and {b_sn.shape}")
  rng = np.random.default_rng(seed)
  diff_n = a_sn.mean(0) - b_sn.mean(0)
  stats_b = []
  for start in range(0, num_resamples, chunk):
    size = min(chunk, num_resamples - start)
    cn_bn = rng.multinomial(n, np.full(n, 1.0 / n), size=size)
    if resample_seeds:
      ca_bs = rng.multinomial(sa, np.full(sa, 1.0 / sa), size=size)
      cb_bs = rng.multinomial(sb, np.full(sb, 1.0 / sb), size=size)
      d_bn = ca_bs @ a_sn / sa - cb_bs @ b_sn / sb
      stats_b.append((cn_bn * d_bn).sum(1) / n)
    else:
      stats_b.append(cn_bn @ diff_n / n)
  stats_b = np.concatenate(stats_b)
  alpha = (1.0 - level) / 2
  lo, hi = np.quantile(stats_b, [alpha, 1.0 - alpha])
  return {"mean_diff": float(diff_n.mean()), "ci_low": float(lo), "ci_high": float(hi),
          "n_instances": n, "seeds_a": sa, "seeds_b": sb, "resample_seeds": resample_seeds,
          "num_resamples": num_resamples}


def align(a_runs: Sequence[Mapping], b_runs: Sequence[Mapping]):
  """Per-seed {instance key: score} dicts of two methods -> ([S_a, N], [S_b, N], keys).

  Keys are the instances scored in every run of both sides, sorted.
  """
  if not a_runs or not b_runs:
    raise ValueError("need at least one run on each side")
  keys = sorted(set.intersection(*[set(r) for r in list(a_runs) + list(b_runs)]))
  a = np.array([[r[k] for k in keys] for r in a_runs], np.float64).reshape(len(a_runs), -1)
  b = np.array([[r[k] for k in keys] for r in b_runs], np.float64).reshape(len(b_runs), -1)
  return a, b, keys


def task_means(runs: Sequence[Mapping], keys: Sequence[tuple]) -> dict[str, float]:
  """{task: mean over the seeds of the run's mean over the task's instances}.

  Instance keys are (task, id) pairs; only `keys` count.
  """
  out: dict[str, list[float]] = {}
  for k in keys:
    out.setdefault(k[0], []).append(float(np.mean([r[k] for r in runs])))
  return {t: float(np.mean(v)) for t, v in out.items()}


def compare_methods(a_runs: Sequence[Mapping], b_runs: Sequence[Mapping],
                    num_resamples: int = 10000, seed: int = 0,
                    resample_seeds: bool = True) -> dict:
  """Instance-level paired bootstrap and task-level sign test of A against B.

  Args:
    a_runs: one {(task, id): score} per seed of A.
    b_runs: the same for B.

  Returns:
    paired_bootstrap's fields, plus "wins", "losses", "ties", "n_tasks",
    "win_rate" (A's share of the decided tasks), "p_one_sided" (A wins more
    than half) and "p_two_sided" (exact sign test).
  """
  a, b, keys = align(a_runs, b_runs)
  res = paired_bootstrap(a, b, num_resamples, seed, resample_seeds)
  wr = win_rate(task_means(a_runs, keys), task_means(b_runs, keys))
  res.update(wins=wr["wins"], losses=wr["losses"], ties=wr["ties"], n_tasks=len(wr["per_task"]),
             win_rate=wr["win_rate"], p_one_sided=wr["p_value"],
             p_two_sided=sign_test_two_sided(wr["wins"], wr["n"]))
  return res


def all_pairs(methods: Mapping[str, Sequence[Mapping]], **kw) -> list[dict]:
  """`compare_methods` for every unordered pair, in the order of `methods`.

  Args:
    methods: {label: [per-seed {(task, id): score}]}.
    **kw: passed to compare_methods.

  Returns:
    [{"a", "b", **compare_methods(...)}] for a before b in `methods`.
  """
  labels = list(methods)
  return [{"a": a, "b": b, **compare_methods(methods[a], methods[b], **kw)}
          for i, a in enumerate(labels) for b in labels[i + 1:]]
