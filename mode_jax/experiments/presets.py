"""Named sweep grids, as data: the paper's tables and CPU-scale comparisons.

A preset is a dict:
  doc         one line: what it reproduces.
  model       model config name (for parameter counts and MODEL).
  gin_files   experiment gin files (searched in configs/); the sweep adds
              `adapters/<method>.gin` of each point.
  base        "quickstart" (reuse or build the cached tiny base) or None
              (BASE_CHECKPOINT must be given to the sweep).
  targets     adapted matrices (default q, k, v, o).
  points      list of point specs: Point fields (method, rank, experts,
              expert_rank, bindings) plus optional `vary` ("experts" or
              "rank"): that field is solved by `points.match_budget` so the
              point's count (adapters.count_params) is nearest the budget.
  budget      the budget of `vary` points: {"point": spec} (the count of
              that point) or {"percent": x} (% of base non-embedding).
  seeds, lrs  lists crossed with every point (lr None: the gin files').
  paper       optional reference numbers, for reports.

New adapter kinds are named by method: {"method": "flylora", "rank": 32,
"bindings": {"TOP_K": 8}} once `configs/adapters/flylora.gin` exists.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mode_jax import models
from mode_jax.experiments import points as points_lib

PAPER_GIN = ["experiments/paper_gemma_2b.gin"]
CPU_GIN = ["experiments/sweep_cpu_tiny.gin"]
# The study protocol: base pretrained on tasks disjoint from the adapters'
# (data/sni_full_sample/README.md), seen and unseen tasks (scripts/study.py).
STUDY_GIN = ["experiments/study_cpu_tiny.gin"]
CPU_BUDGET = {"point": {"method": "mode", "experts": 8, "rank": 4, "expert_rank": 1}}
# The four methods at one matched budget (rank / m solved by count_params).
CPU_POINTS = [
    {"method": "lora", "rank": 4, "vary": "rank"},
    {"method": "molora", "experts": 4, "rank": 4, "vary": "rank"},
    {"method": "molora_sd", "experts": 8, "rank": 4, "vary": "rank"},
    {"method": "mode", "experts": 8, "rank": 4, "expert_rank": 1},
]

PRESETS: dict[str, dict[str, Any]] = {
    "main_table": {
        "doc": "Paper Table 1 on Gemma 2B: LoRA 64, MoLoRA 16x4, MoLoRA-SD 16x4, MoDE 16x4, 6x4.",
        "model": "gemma_2b", "gin_files": PAPER_GIN, "base": None,
        "points": [
            {"method": "lora", "rank": 64},
            {"method": "molora", "experts": 16, "rank": 4},
            {"method": "molora_sd", "experts": 16, "rank": 4},
            {"method": "mode", "experts": 16, "rank": 4, "expert_rank": 1},
            {"method": "mode", "experts": 6, "rank": 4, "expert_rank": 1},
        ],
        "seeds": [0],
        "paper": {"LoRA 64": (56.11, 6.31), "MoLoRA 16x4": (57.77, 7.62),
                  "MoLoRA-SD 16x4": (58.28, 2.71), "MoDE 16x4": (60.00, 6.64),
                  "MoDE 6x4": (60.91, 2.69)},
    },
    "ablation": {
        "doc": "Paper's experts x rank ablation of MoDE on Gemma 2B (m x R).",
        "model": "gemma_2b", "gin_files": PAPER_GIN, "base": None,
        "points": [{"method": "mode", "experts": m, "rank": r, "expert_rank": 1}
                   for m, r in [(4, 4), (6, 4), (8, 4), (16, 4), (4, 6), (4, 8), (4, 16)]],
        "seeds": [0],
    },
    "generalised": {
        # Only 12x16x8 is named in METHODS.md; the other p (expert rank) values
        # at the same m and R complete the table's p axis (our choice).
        "doc": "Generalised MoDE m x R x p on Gemma 2B: 12x16 with p in 1, 2, 4, 8, 16.",
        "model": "gemma_2b", "gin_files": PAPER_GIN, "base": None,
        "points": [{"method": "mode", "experts": 12, "rank": 16, "expert_rank": p}
                   for p in (1, 2, 4, 8, 16)],
        "seeds": [0],
        "paper": {"MoDE 12x16x8": (60.94, 6.49)},
    },
    "iso_param": {
        "doc": "Iso-parameter MoDE sweep on Gemma 2B: m solved per (R, p) to the budget of "
               "MoDE 12x16x8 under count_params.",
        "model": "gemma_2b", "gin_files": PAPER_GIN, "base": None,
        "budget": {"point": {"method": "mode", "experts": 12, "rank": 16, "expert_rank": 8}},
        "points": [{"method": "mode", "rank": r, "expert_rank": p, "vary": "experts"}
                   for r, p in [(4, 1), (8, 1), (8, 4), (16, 1), (16, 4), (16, 8), (16, 16),
                                (32, 8), (32, 16)]],
        "seeds": [0],
    },
    "cpu_compare": {
        "doc": "Tiny base, bundled SNI sample: LoRA, MoLoRA, MoLoRA-SD, MoDE at the budget of "
               "MoDE 8x4 (rank / m solved by count_params), 2 seeds.",
        "model": "tiny_quickstart", "gin_files": CPU_GIN, "base": "quickstart",
        "budget": CPU_BUDGET,
        "points": CPU_POINTS,
        "seeds": [0, 1],
    },
    "study": {
        "doc": "CPU study (scripts/study.py): tiny base pretrained on 26 tasks, adapters on 27 "
               "other tasks, 10 unseen test tasks; LoRA, MoLoRA, MoLoRA-SD, MoDE at the budget "
               "of MoDE 8x4 (rank / m solved by count_params), 3 seeds.",
        "model": "tiny_quickstart", "gin_files": STUDY_GIN, "base": "quickstart",
        "budget": CPU_BUDGET,
        "points": CPU_POINTS,
        "seeds": [0, 1, 2],
    },
    "cpu_rankwise": {
        # Rank-wise mixtures (METHODS.md extensions) beside LoRA and MoDE at the
        # cpu_compare budget; FlyLoRA's frozen sparse lora_a is not counted in
        # the budget (count_params reports it as "frozen").
        "doc": "Tiny base: LoRA, FlyLoRA (k=8), SMoRA (k=8), MoDE 8x4 at matched trainable "
               "parameters, 2 seeds.",
        "model": "tiny_quickstart", "gin_files": CPU_GIN, "base": "quickstart",
        "budget": CPU_BUDGET,
        "points": [
            {"method": "lora", "rank": 4, "vary": "rank"},
            {"method": "flylora", "rank": 32, "vary": "rank", "bindings": {"TOP_K": 8}},
            {"method": "smora", "rank": 32, "vary": "rank", "bindings": {"TOP_K": 8}},
            {"method": "mode", "experts": 8, "rank": 4, "expert_rank": 1},
        ],
        "seeds": [0, 1],
    },
    "cpu_ablation": {
        "doc": "Tiny base: MoDE experts x rank grid (heat-map input), 1 seed.",
        "model": "tiny_quickstart", "gin_files": CPU_GIN, "base": "quickstart",
        "points": [{"method": "mode", "experts": m, "rank": r, "expert_rank": 1}
                   for m in (2, 4, 8) for r in (2, 4, 8)],
        "seeds": [0],
    },
    "cpu_smoke": {
        "doc": "Two tiny MoDE points for a quick check of the sweep machinery.",
        "model": "tiny_quickstart", "gin_files": CPU_GIN, "base": "quickstart",
        "points": [{"method": "mode", "experts": 2, "rank": 2, "expert_rank": 1},
                   {"method": "lora", "rank": 2}],
        "seeds": [0],
    },
}

_FIELDS = {f.name for f in dataclasses.fields(points_lib.Point)}


def point_from_spec(spec: dict, **kw) -> points_lib.Point:
  """A Point from a preset spec (drops `vary`; bindings may be a dict)."""
  d = {k: v for k, v in spec.items() if k in _FIELDS}
  unknown = set(spec) - _FIELDS - {"vary"}
  if unknown:
    raise ValueError(f"unknown point field(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}")
  b = d.get("bindings", ())
  d["bindings"] = tuple(b.items()) if isinstance(b, dict) else tuple(tuple(x) for x in b)
  d.update(kw)
  return points_lib.Point(**d)


def budget_trainable(preset: dict) -> float | None:
  """The preset's budget in trainable parameters (None without one)."""
  budget = preset.get("budget")
  if not budget:
    return None
  cfg = models.get_config(preset["model"])
  targets = tuple(preset.get("targets", points_lib.DEFAULT_TARGETS))
  if "point" in budget:
    return points_lib.count(point_from_spec(budget["point"]), cfg, targets)["trainable"]
  return budget["percent"] / 100.0 * cfg.non_embedding_params()


def expand(name: str, seeds=None, lrs=None) -> list[points_lib.Point]:
  """The points of preset `name` (budgets solved), crossed with seeds and lrs."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
  preset = PRESETS[name]
  cfg = models.get_config(preset["model"])
  targets = tuple(preset.get("targets", points_lib.DEFAULT_TARGETS))
  budget = budget_trainable(preset)
  out = []
  for lr in (lrs or preset.get("lrs", [None])):
    for seed in (seeds if seeds is not None else preset.get("seeds", [0])):
      for spec in preset["points"]:
        pt = point_from_spec(spec, lr=lr, seed=seed)
        if spec.get("vary"):
          if budget is None:
            raise ValueError(f"preset {name!r}: point {spec} varies but has no budget")
          pt = points_lib.match_budget(pt, cfg, budget, spec["vary"], targets)
        out.append(pt)
  return out
