"""Sweep plots (matplotlib, Agg backend): ROUGE-L over experts x rank, and
ROUGE-L against % added parameters per method."""

from __future__ import annotations

import statistics
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top


def heatmap(rows: Sequence[dict], path: str, method: str = "mode", value: str = "rougeL") -> bool:
  """Mean `value` over seeds on an experts (rows) x rank (columns) grid.

  Uses the rows of `method` with p in (None, 1); returns False (and draws
  nothing) when there are none.
  """
  sel = [r for r in rows if r["method"] == method and r["m"] is not None
         and r["p"] in (None, 1) and r.get(value) is not None]
  if not sel:
    return False
  ms = sorted({r["m"] for r in sel})
  rs = sorted({r["R"] for r in sel})
  grid = np.full((len(ms), len(rs)), np.nan)
  for i, m in enumerate(ms):
    for j, rk in enumerate(rs):
      vals = [r[value] for r in sel if r["m"] == m and r["R"] == rk]
      if vals:
        grid[i, j] = statistics.fmean(vals)
  fig, ax = plt.subplots(figsize=(1.2 * len(rs) + 2.5, 0.9 * len(ms) + 2))
  im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
  ax.set_xticks(range(len(rs)), [str(r) for r in rs])
  ax.set_yticks(range(len(ms)), [str(m) for m in ms])
  ax.set_xlabel("rank R")
  ax.set_ylabel("experts m")
  for i in range(len(ms)):
    for j in range(len(rs)):
      if not np.isnan(grid[i, j]):
        ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
  fig.colorbar(im, ax=ax, label=f"{value} (mean over seeds)")
  ax.set_title(f"{method}: {value} over experts x rank")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def versus_params(rows: Sequence[dict], path: str, value: str = "rougeL") -> bool:
  """`value` against % added parameters: every run as a dot, seed means joined per method."""
  sel = [r for r in rows if r.get(value) is not None and r.get("percent_added") is not None]
  if not sel:
    return False
  fig, ax = plt.subplots(figsize=(6, 4))
  for method in sorted({r["method"] for r in sel}):
    rs = [r for r in sel if r["method"] == method]
    dots = ax.scatter([r["percent_added"] for r in rs], [r[value] for r in rs], alpha=0.4, s=15)
    means = {}
    for r in rs:
      means.setdefault(r["percent_added"], []).append(r[value])
    xs = sorted(means)
    ax.plot(xs, [statistics.fmean(means[x]) for x in xs], "o-", color=dots.get_facecolor()[0],
            alpha=1.0, label=method)
  ax.set_xlabel("added parameters (% of base non-embedding)")
  ax.set_ylabel(value)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
