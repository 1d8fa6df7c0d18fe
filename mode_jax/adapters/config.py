"""AdapterConfig: which adapter, with which shapes, on which matrices.

Checks common to every kind live here; which optional fields a kind takes,
its defaults and its own checks come from its `registry.Kind`.
"""

from __future__ import annotations

import dataclasses

from mode_jax.adapters import registry

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# Published defaults (METHODS.md, "Two later rank-wise mixtures").
DEFAULT_TOP_K = 8


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Chooses the adapter kind, its shapes and the adapted matrices.

  Attributes:
    kind: a registered kind (`registry.names()`).
    rank: R, number of rank-one components.
    num_experts: E (m in the paper); 1 for LoRA, FlyLoRA and SMoRA.
    expert_rank: p, rank columns per routed group in MoDE (p divides R);
      p = 1 is the paper's MoDE, p = R is MoLoRA-SD.
    alpha: scale numerator. The delta is multiplied by alpha / R (alpha /
      top_k for SMoRA). None means alpha = that denominator (scale 1).
    targets: adapted matrices, any subset of TARGETS.
    a_init_scale: std of the normal init of `lora_a` (METHODS.md: 0.01);
      unused by FlyLoRA, whose `lora_a` is frozen sparse N(0, 1/R^2).
    b_init_scale: std of the normal init of `lora_b` (0 = identity at init).
    router_init_scale: std of the normal init of `router` (0.02).
    top_k: active rank columns per token for FlyLoRA / SMoRA (None = the
      published 8, capped at R); experts kept per group for MoDE (None or
      num_experts = dense MoDE; 1 <= top_k <= E). Unused by the others.
    bias_rate: u, the step of the balancing-bias rule d_i += u * sign(mean(c)
      - c_i) of FlyLoRA / SMoRA (None = published 1e-3 / 1e-5; 0 freezes the
      bias at zero). Only for those kinds.
    density: rho, the fraction of non-zeros per column of FlyLoRA's frozen
      `lora_a` (None = top_k / R; 0 < rho <= 1). FlyLoRA only.
    aux_loss_weight: weight of MoDE's Switch-style load-balancing loss
      E * sum_e f_e P_e (mean over groups), added to the training loss.
      Needs kind='mode' with top_k < num_experts; 0 = no loss.
  """
  kind: str = "lora"
  rank: int = 8
  num_experts: int = 1
  expert_rank: int = 1
  alpha: float | None = None
  targets: tuple[str, ...] = ("q", "k", "v", "o")
  a_init_scale: float = 0.01
  b_init_scale: float = 0.0
  router_init_scale: float = 0.02
  top_k: int | None = None
  bias_rate: float | None = None
  density: float | None = None
  aux_loss_weight: float = 0.0

  def __post_init__(self):
    kind = registry.get(self.kind)
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"AdapterConfig.rank must be a positive int, got {self.rank!r}")
    for f in ("num_experts", "expert_rank"):
      v = getattr(self, f)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"AdapterConfig.{f} must be a positive int, got {v!r}")
    k = self.top_k
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
      raise ValueError(f"AdapterConfig.top_k must be a positive int or None, got {k!r}")
    if self.bias_rate is not None and not self.bias_rate >= 0:
      raise ValueError(f"AdapterConfig.bias_rate must be >= 0, got {self.bias_rate!r}")
    if self.density is not None and not 0 < self.density <= 1:
      raise ValueError(f"AdapterConfig.density must be in (0, 1] or None, got {self.density!r}")
    if not self.aux_loss_weight >= 0:
      raise ValueError(f"AdapterConfig.aux_loss_weight must be >= 0, got "
                       f"{self.aux_loss_weight!r}")
    for f, neutral in registry.OPTIONS.items():
      if f not in kind.options and getattr(self, f) != neutral:
        raise ValueError(f"AdapterConfig.{f}={getattr(self, f)!r} applies to kinds "
                         f"{registry.taking(f)}; leave it at {neutral!r} for "
                         f"kind={self.kind!r}")
    targets = tuple(self.targets)
    object.__setattr__(self, "targets", targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets or len(set(targets)) != len(targets):
      raise ValueError(
          f"AdapterConfig.targets={targets!r}; allowed: non-empty, distinct, from {TARGETS}")
    for f in ("a_init_scale", "b_init_scale", "router_init_scale"):
      if getattr(self, f) < 0:
        raise ValueError(f"AdapterConfig.{f} must be >= 0, got {getattr(self, f)}")
    if self.alpha is not None and not self.alpha > 0:
      raise ValueError(f"AdapterConfig.alpha must be > 0 or None, got {self.alpha!r}")
    if kind.validate is not None:
      for f, v in (kind.validate(self) or {}).items():
        object.__setattr__(self, f, v)

  @property
  def scale(self) -> float:
    """s = alpha / R (alpha / top_k for SMoRA)."""
    denom = self.top_k if registry.get(self.kind).scale_by_top_k else self.rank
    return (denom if self.alpha is None else self.alpha) / denom

  @property
  def num_groups(self) -> int:
    """G = R / p for kinds with an expert rank (MoDE); 1 for the others."""
    if "expert_rank" in registry.get(self.kind).options:
      return self.rank // self.expert_rank
    return 1

  @property
  def sparse_experts(self) -> bool:
    """MoDE keeps top_k < E experts per group (False: today's dense MoDE)."""
    return (self.num_experts > 1 and self.top_k is not None
            and self.top_k < self.num_experts)

