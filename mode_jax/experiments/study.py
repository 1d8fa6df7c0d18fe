"""The CPU-scale study: per-instance scores, method tables, pairwise statistics, routing.

Legend: T tasks, M adapted matrices, E experts, P label permutations.

Inputs are run directories made by `scripts/study.py` (train, then one
evaluation per split, each with a predictions file of per-instance scores):

  <run>/predictions_validation.jsonl   held-out 10% of the adapters' tasks ("seen")
  <run>/predictions_test.jsonl         test-split tasks, never trained on ("unseen")

Every number here is computed from those files; nothing is read from logs.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Mapping, Sequence

import numpy as np

from mode_jax.experiments import stats

SPLITS = {"validation": "seen tasks (held-out instances)",
          "test": "unseen tasks (test-split tasks, never trained on)"}
METHOD_ORDER = ("lora", "molora", "molora_sd", "mode", "flylora", "smora")
BASE_LABEL = "frozen base"


def predictions_file(split: str) -> str:
  return f"predictions_{split}.jsonl"


def instance_scores(path: str, metric: str = "rougeL") -> dict[tuple, float]:
  """{(task, id): score} of one predictions JSONL (records of mode_jax.eval)."""
  out = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      rec = json.loads(line)
      try:
        out[(rec["task"], str(rec["id"]))] = float(rec["score"][metric])
      except (KeyError, TypeError) as e:
        raise ValueError(f"{path}:{n}: record without task, id or score.{metric}") from e
  return out


def runs_by_method(runs: Sequence[dict], split: str, metric: str = "rougeL") -> dict:
  """{label: [per-seed {(task, id): score}]}, methods in METHOD_ORDER, seeds in order.

  Args:
    runs: `rundirs.load_run` dicts (with "dir" and "point").
    split: "validation" or "test"; runs without that predictions file are left out.
  """
  from mode_jax.experiments import tables  # pylint: disable=g-import-not-at-top
  groups: dict = {}
  for run in sorted(runs, key=lambda r: r["point"].get("seed") or 0):
    path = os.path.join(run["dir"], predictions_file(split))
    if not os.path.exists(path):
      continue
    pt = run["point"]
    lab = tables.label(pt.get("method"), pt.get("experts"), pt.get("rank"),
                       pt.get("expert_rank"))
    groups.setdefault((_method_rank(pt.get("method")), lab), []).append(
        instance_scores(path, metric))
  return {lab: v for (_, lab), v in sorted(groups.items())}


def _method_rank(method) -> int:
  return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def method_rows(methods: Mapping[str, Sequence[Mapping]]) -> list[dict]:
  """Per method: seeds, instances, tasks, mean over seeds of the overall mean, std, range."""
  rows = []
  for lab, runs in methods.items():
    overall = [float(np.mean(list(r.values()))) for r in runs]
    rows.append({"label": lab, "seeds": len(runs), "instances": len(runs[0]),
                 "tasks": len({k[0] for k in runs[0]}),
                 "mean": statistics.fmean(overall),
                 "std": statistics.stdev(overall) if len(overall) > 1 else None,
                 "per_seed": overall})
  return rows


def _f(v, fmt="{:.2f}") -> str:
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return ""
  return fmt.format(v)


def method_markdown(rows: Sequence[dict]) -> str:
  lines = ["| method | seeds | instances | tasks | ROUGE-L (mean over seeds) | std | per seed |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['label']} | {r['seeds']} | {r['instances']} | {r['tasks']} | "
                 f"{_f(r['mean'])} | {_f(r['std'])} | "
                 f"{', '.join(f'{x:.2f}' for x in r['per_seed'])} |")
  return "\n".join(lines) + "\n"


def pairs_markdown(pairs: Sequence[dict]) -> str:
  """One row per pair: A - B with its 95% CI, task wins / losses / ties, sign test."""
  lines = ["| A | B | A - B (ROUGE-L) | 95% CI | instances | tasks A won-lost (ties) | "
           "win rate of A | sign test p (two-sided) |", "|---|---|---|---|---|---|---|---|"]
  for p in pairs:
    sig = p["ci_low"] > 0 or p["ci_high"] < 0
    diff = f"**{p['mean_diff']:+.2f}**" if sig else f"{p['mean_diff']:+.2f}"
    lines.append(f"| {p['a']} | {p['b']} | {diff} | [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}] | "
                 f"{p['n_instances']} | {p['wins']}-{p['losses']} ({p['ties']}) | "
                 f"{_f(100 * p['win_rate'], '{:.0f}%')} | {_f(p['p_two_sided'], '{:.3g}')} |")
  return "\n".join(lines) + "\n"


def category_sharing(per_task: Mapping[str, Mapping[str, Mapping]],
                     categories: Mapping[str, str], num_permutations: int = 5000,
                     seed: int = 0) -> dict:
  """Do tasks of one category route alike? A permutation test over category labels.

  The distance between two tasks is the total-variation distance of their
  mean expert loads, averaged over the adapted matrices. The statistic is
  `gap = mean distance of different-category pairs - mean distance of
  same-category pairs` (> 0: same-category tasks share experts more); its
  p-value is the share of label permutations (category sizes kept) with a
  gap at least as large.

  Args:
    per_task: {task: {matrix: {"load": [E]}}} (routing.json's per_task).
    categories: {task: category}.
    num_permutations: P.
    seed: seed of the permutations.

  Returns:
    {"same", "different", "gap", "p_value", "same_pairs", "tasks",
     "shared_categories": {category: [tasks]} with 2+ tasks}
  """
  tasks = [t for t in per_task if t in categories]
  names = sorted(per_task[tasks[0]])
  load_tme = np.array([[per_task[t][n]["load"] for n in names] for t in tasks], np.float64)
  dist_tt = 0.5 * np.abs(load_tme[:, None] - load_tme[None]).sum(-1).mean(-1)
  labels = np.unique([categories[t] for t in tasks], return_inverse=True)[1]
  off = ~np.eye(len(tasks), dtype=bool)

  def gap(lab_pt):  # lab_pt: [P, T] labels -> [P] gaps
    same = (lab_pt[:, :, None] == lab_pt[:, None, :]) & off
    diff = ~same & off
    return ((dist_tt * diff).sum((1, 2)) / diff.sum((1, 2))
            - (dist_tt * same).sum((1, 2)) / np.maximum(same.sum((1, 2)), 1))

  rng = np.random.default_rng(seed)
  perms = np.stack([rng.permutation(labels) for _ in range(num_permutations)])
  observed = float(gap(labels[None])[0])
  null = gap(perms)
  same = (labels[:, None] == labels[None]) & off
  groups: dict = {}
  for t in tasks:
    groups.setdefault(categories[t], []).append(t)
  return {"same": float(dist_tt[same].mean()) if same.any() else float("nan"),
          "different": float(dist_tt[~same & off].mean()), "gap": observed,
          "p_value": float((1 + (null >= observed - 1e-12).sum()) / (1 + num_permutations)),
          "same_pairs": int(same.sum() // 2), "tasks": len(tasks),
          "shared_categories": {c: ts for c, ts in sorted(groups.items()) if len(ts) > 1}}


def plot_routing(per_task: Mapping[str, Mapping[str, Mapping]], categories: Mapping[str, str],
                 path: str, title: str = "") -> str:
  """Expert load per task (rows, grouped by category) for every layer (columns) and
  adapted matrix (rows of panels)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = sorted(per_task, key=lambda t: (categories.get(t, ""), t))
  names = list(per_task[tasks[0]])
  layers = sorted({_layer(n)[0] for n in names})
  mats = sorted({_layer(n)[1] for n in names})
  fig, axes = plt.subplots(len(mats), len(layers), squeeze=False,
                           figsize=(2.2 * len(layers) + 3, (0.13 * len(tasks) + 0.8) * len(mats)))
  for n in names:
    layer, mat = _layer(n)
    ax = axes[mats.index(mat), layers.index(layer)]
    m = np.array([per_task[t][n]["load"] for t in tasks])
    ax.imshow(m, aspect="auto", cmap="magma", vmin=0)
    ax.set_title(f"layer {layer} {mat}", fontsize=7)
    ax.set_xticks(range(m.shape[1]))
    ax.tick_params(axis="x", labelsize=5)
    if layers.index(layer) == 0:
      ax.set_yticks(range(len(tasks)),
                    [f"{categories.get(t, '?')[:18]} | {t.split('_')[0]}" for t in tasks],
                    fontsize=4.5)
    else:
      ax.set_yticks([])
  fig.suptitle(title or "mean router weight per task (rows, by category) and expert", fontsize=9)
  fig.tight_layout(rect=(0, 0, 1, 0.98))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _layer(name: str) -> tuple[int, str]:
  parts = name.split("/")
  idx = next((i for i, p in enumerate(parts) if p.isdigit()), None)
  if idx is None:
    return -1, name
  return int(parts[idx]), "/".join(parts[idx + 1:]) or name


def all_pairs_with_base(methods: Mapping[str, Sequence[Mapping]], base: Mapping | None,
                        **kw) -> list[dict]:
  """stats.all_pairs over the methods, then each method against the frozen base."""
  pairs = stats.all_pairs(methods, **kw)
  if base:
    pairs += [{"a": lab, "b": BASE_LABEL, **stats.compare_methods(runs, [base], **kw)}
              for lab, runs in methods.items()]
  return pairs
