"""Do LoRA factors of different tasks share structure? (the paper's motivating study)

Legend: T tasks, R rank positions, D features of one factor column (P for
`lora_a [P,R]` columns, Q for `lora_b [R,Q]` rows).

For each adapted matrix, the rank-j vectors of every task (column j of
`lora_a`, row j of `lora_b`) are stacked as `v_trd [T, R, D]`. Clustering by
rank position shows as a high cosine similarity between same-position vectors
of different tasks compared with different-position vectors of different
tasks: `gap = same_position - different_position` (0: no clustering).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

FACTORS = ("lora_a", "lora_b")


def factor_vectors(w: np.ndarray, factor: str) -> np.ndarray:
  """The R rank vectors [R, D] of one factor (`lora_a` columns, `lora_b` rows)."""
  return np.asarray(w).T if factor == "lora_a" else np.asarray(w)


def clustering(v_trd: np.ndarray) -> dict[str, float]:
  """Mean cosine of same- vs different-position rank vectors across tasks.

  Args:
    v_trd: [T, R, D] rank vectors of T >= 2 tasks.

  Returns:
    {"same_position": mean cos(v[t, j], v[u, j]) over t != u,
     "different_position": mean cos(v[t, j], v[u, k]) over t != u, j != k,
     "gap": their difference}
  """
  t, r, _ = v_trd.shape
  if t < 2:
    raise ValueError(f"need at least 2 tasks, got {t}")
  unit = v_trd / np.maximum(np.linalg.norm(v_trd, axis=-1, keepdims=True), 1e-12)
  cos = np.einsum("trd,usd->trus", unit, unit)  # [T, R, T, R]
  other_task = ~np.eye(t, dtype=bool)[:, None, :, None]
  same_pos = np.eye(r, dtype=bool)[None, :, None, :]
  same = cos[other_task & same_pos].mean()
  diff = cos[other_task & ~same_pos].mean() if r > 1 else float("nan")
  return {"same_position": float(same), "different_position": float(diff),
          "gap": float(same - diff)}


def pca3(x_nd: np.ndarray) -> np.ndarray:
  """Projection of the rows of x [N, D] on their top-3 principal components [N, 3]."""
  x = x_nd - x_nd.mean(axis=0, keepdims=True)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  k = min(3, vt.shape[0])
  out = x @ vt[:k].T
  return np.pad(out, ((0, 0), (0, 3 - k)))


def matrices(weights: Mapping[str, Mapping[tuple, np.ndarray]]) -> dict[tuple, dict]:
  """Regroups {task: {param path: array}} as {(matrix path, factor): {task: array}}."""
  out: dict = {}
  for task, flat in weights.items():
    for path, arr in flat.items():
      if path and path[-1] in FACTORS:
        out.setdefault((tuple(path[:-1]), path[-1]), {})[task] = np.asarray(arr)
  return out


def summarize(weights: Mapping[str, Mapping[tuple, np.ndarray]],
              tasks: Sequence[str] | None = None) -> dict:
  """Clustering of every adapted matrix and the mean per factor.

  Returns:
    {"per_matrix": {"<path>/<factor>": clustering}, "mean": {factor: {...}}}
  """
  tasks = list(tasks or weights)
  per = {}
  for (path, factor), by_task in sorted(matrices(weights).items(), key=str):
    v = np.stack([factor_vectors(by_task[t], factor) for t in tasks])
    per["/".join(map(str, path)) + "/" + factor] = clustering(v)
  mean = {}
  for f in FACTORS:
    rows = [c for k, c in per.items() if k.endswith("/" + f)]
    if rows:
      mean[f] = {k: float(np.nanmean([c[k] for c in rows])) for k in rows[0]}
  return {"per_matrix": per, "mean": mean}
