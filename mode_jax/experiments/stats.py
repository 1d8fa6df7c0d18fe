"""Task-level win rate and the one-sided binomial sign test the paper reports.

Rule for ties: a task where both runs score exactly the same ROUGE-L (within
`tie_tol`) is dropped, as in the classical sign test; the win rate and the
test use the remaining n = wins + losses tasks. Tasks present in only one
run are ignored (and counted in `unpaired`).
"""

from __future__ import annotations

import math
from typing import Mapping


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
