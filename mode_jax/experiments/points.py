"""Sweep points: one run each (method, experts m, rank R, expert rank p, lr, seed).

A `Point` becomes gin bindings through the adapter gin file of its method
(`configs/adapters/<method>.gin`, which reads the macros its registered
kind declares: RANK, EXPERTS, EXPERT_RANK, ...) plus any extra bindings it
carries. Which fields a method takes (m, p) and its display name come from
the adapter registry (`mode_jax.adapters.registry`).

Parameter counts come from `mode_jax.adapters.count_params` alone (shapes,
no model is built); `match_budget` picks the free size of a point whose
count lands nearest a target.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Iterable, Mapping, Sequence

from mode_jax import adapters as adapters_lib

DEFAULT_TARGETS = ("q", "k", "v", "o")


def _kind(method: str):
  """The registered adapter kind of a method, or None for a name it does not know."""
  return adapters_lib.registry.get(method) if method in adapters_lib.registry.names() else None


def takes_experts(method: str) -> bool:
  """Whether the method's configs take experts m (its kind has `num_experts`)."""
  kind = _kind(method)
  return kind is None or "num_experts" in kind.options


def takes_expert_rank(method: str) -> bool:
  """Whether the method's configs take an expert rank p (MoDE)."""
  kind = _kind(method)
  return kind is not None and "expert_rank" in kind.options


# Display names by kind (tables.py), read from the registry.
PRETTY = {k: adapters_lib.registry.get(k).display for k in adapters_lib.registry.names()}


def display_name(method: str) -> str:
  """The paper's name of a method (its kind's `display`), else the method itself."""
  kind = _kind(method)
  return kind.display if kind is not None else method


def gin_value(v: Any) -> str:
  """A Python value as gin text (strings double-quoted, so shells keep them)."""
  if isinstance(v, str):
    return json.dumps(v)
  if isinstance(v, bool) or v is None:
    return repr(v)
  if isinstance(v, float):
    return repr(v)
  if isinstance(v, (list, tuple)):
    inner = ", ".join(gin_value(x) for x in v)
    return f"({inner},)" if isinstance(v, tuple) and len(v) == 1 else (
        f"({inner})" if isinstance(v, tuple) else f"[{inner}]")
  if isinstance(v, dict):
    return "{" + ", ".join(f"{gin_value(k)}: {gin_value(x)}" for k, x in v.items()) + "}"
  return str(v)


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of a sweep.

  Attributes:
    method: adapter kind (AdapterConfig.kind), e.g. "mode"; its gin file is
      `adapters/<method>.gin`.
    rank: R.
    experts: m (None for LoRA).
    expert_rank: p (None except for MoDE; 1 is the paper's MoDE).
    lr: peak learning rate (None: the gin files' value).
    seed: train.seed (adapter initialisation and data order).
    bindings: extra gin bindings as (name, value) pairs, e.g.
      (("MIXTURE_OR_TASK_NAME", "sni_task1146_country_capital"),).
    tag: appended to the run name (e.g. the task of a single-task run); the
      name does not show `bindings`, so points that differ only there need
      distinct tags.
  """
  method: str
  rank: int
  experts: int | None = None
  expert_rank: int | None = None
  lr: float | None = None
  seed: int = 0
  bindings: tuple[tuple[str, Any], ...] = ()
  tag: str = ""

  @property
  def name(self) -> str:
    """Run directory name, e.g. `mode_m8_R4_p1_s0`."""
    parts = [self.method]
    if self.experts is not None:
      parts.append(f"m{self.experts}")
    parts.append(f"R{self.rank}")
    if self.expert_rank is not None:
      parts.append(f"p{self.expert_rank}")
    if self.lr is not None:
      parts.append(f"lr{self.lr:g}")
    parts.append(f"s{self.seed}")
    if self.tag:
      parts.append(self.tag)
    return "_".join(parts)

  @property
  def label(self) -> str:
    """The paper's notation: `MoDE 16x4`, `MoDE 12x16x8`, `LoRA 64`."""
    pretty = display_name(self.method)
    if self.experts is None:
      return f"{pretty} {self.rank}"
    if self.expert_rank in (None, 1):
      return f"{pretty} {self.experts}x{self.rank}"
    return f"{pretty} {self.experts}x{self.rank}x{self.expert_rank}"

  def gin_file(self) -> str:
    return f"adapters/{self.method}.gin"

  def gin_bindings(self, targets: Sequence[str] | None = None) -> list[str]:
    """Bindings of this point (macros of its adapter gin file, lr, seed, extras).

    Written without spaces (`RANK=4`) so that most need no shell quoting.
    """
    out = [f"RANK={self.rank}"]
    if self.experts is not None:
      out.append(f"EXPERTS={self.experts}")
    if self.expert_rank is not None:
      out.append(f"EXPERT_RANK={self.expert_rank}")
    if targets is not None:
      out.append(f"TARGETS={gin_value(tuple(targets))}")
    if self.lr is not None:
      out.append(f"optim.OptimizerConfig.learning_rate={self.lr!r}")
    out.append(f"train.seed={self.seed}")
    out += [f"{k}={gin_value(v)}" for k, v in self.bindings]
    return out

  def adapter_config(self, targets: Sequence[str] = DEFAULT_TARGETS):
    """The AdapterConfig, or None for kinds AdapterConfig does not know yet."""
    kw = dict(kind=self.method, rank=self.rank, targets=tuple(targets))
    if self.experts is not None:
      kw["num_experts"] = self.experts
    if self.expert_rank is not None:
      kw["expert_rank"] = self.expert_rank
    try:
      return adapters_lib.AdapterConfig(**kw)
    except (ValueError, TypeError):
      if _kind(self.method) is not None:
        raise
      return None

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["bindings"] = [list(b) for b in self.bindings]
    return d

  @classmethod
  def from_json(cls, d: Mapping) -> "Point":
    d = dict(d)
    d["bindings"] = tuple(tuple(b) for b in d.get("bindings", ()))
    return cls(**d)


def count(point: Point, model_cfg, targets: Sequence[str] = DEFAULT_TARGETS) -> dict | None:
  """`adapters.count_params` of a point; None if the kind has no count yet."""
  cfg = point.adapter_config(targets)
  if cfg is None:
    return None
  try:
    return adapters_lib.count_params(model_cfg, cfg)
  except ValueError:
    return None


def valid(point: Point) -> bool:
  """Whether the point is a legal adapter (p divides R, LoRA has no m, ...)."""
  if not takes_experts(point.method) and point.experts not in (None, 1):
    return False
  if point.expert_rank is not None and point.rank % point.expert_rank:
    return False
  try:
    point.adapter_config()
  except ValueError:
    return False
  return True


def grid(methods: Iterable[str], ranks: Iterable[int], experts: Iterable[int] = (None,),
         expert_ranks: Iterable[int] = (None,), lrs: Iterable[float] = (None,),
         seeds: Iterable[int] = (0,)) -> list[Point]:
  """The Cartesian product, with fields a method does not take dropped.

  Kinds without experts (LoRA, FlyLoRA, SMoRA; `registry.Kind.options`)
  drop m, kinds without an expert rank drop p, MoDE defaults p to 1; illegal
  points (p not dividing R) are skipped; duplicates are removed in order.
  """
  out, seen = [], set()
  for meth, r, m, p, lr, s in itertools.product(methods, ranks, experts, expert_ranks, lrs,
                                                seeds):
    if not takes_experts(meth):
      m = None
    if not takes_expert_rank(meth):
      p = None
    elif p is None:
      p = 1
    pt = Point(meth, r, m, p, lr, s)
    if pt in seen or not valid(pt):
      continue
    seen.add(pt)
    out.append(pt)
  return out


def match_budget(point: Point, model_cfg, target_trainable: float, vary: str,
                 targets: Sequence[str] = DEFAULT_TARGETS, lo: int = 1,
                 hi: int = 512) -> Point:
  """The point with `vary` ("experts" or "rank") set so its count is nearest the target.

  Args:
    point: the point to adjust (its `vary` field is ignored).
    model_cfg: a models.ModelConfig.
    target_trainable: the budget in trainable parameters.
    vary: which field to search over [lo, hi].
    targets: adapted matrices.

  Returns:
    The adjusted point (ties go to the smaller value).

  Raises:
    ValueError: the method has no parameter count, or no legal value exists.
  """
  if vary not in ("experts", "rank"):
    raise ValueError(f"vary must be 'experts' or 'rank', got {vary!r}")
  best, best_err = None, None
  for v in range(lo, hi + 1):
    cand = dataclasses.replace(point, **{vary: v})
    if not valid(cand):
      continue
    c = count(cand, model_cfg, targets)
    if c is None:
      raise ValueError(f"no parameter count for method {point.method!r}: cannot match a budget")
    err = abs(c["trainable"] - target_trainable)
    if best_err is None or err < best_err:
      best, best_err = cand, err
  if best is None:
    raise ValueError(f"no legal value of {vary} in [{lo}, {hi}] for {point}")
  return best
