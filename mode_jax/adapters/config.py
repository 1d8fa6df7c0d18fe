"""AdapterConfig: which adapter, with which shapes, on which matrices."""

from __future__ import annotations

import dataclasses

KINDS = ("lora", "molora", "molora_sd", "mode")
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Chooses the adapter kind, its shapes and the adapted matrices.

  Attributes:
    kind: one of KINDS.
    rank: R, number of rank-one components.
    num_experts: E (m in the paper); 1 for LoRA.
    expert_rank: p, rank columns per routed group in MoDE (p divides R);
      p = 1 is the paper's MoDE, p = R is MoLoRA-SD.
    alpha: scale numerator; the delta is multiplied by alpha / R. None
      means alpha = R (scale 1).
    targets: adapted matrices, any subset of TARGETS.
    a_init_scale: std of the normal init of `lora_a` (METHODS.md: 0.01).
    b_init_scale: std of the normal init of `lora_b` (0 = identity at init).
    router_init_scale: std of the normal init of `router` (0.02).
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

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"AdapterConfig.kind={self.kind!r}; allowed: {KINDS}")
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"AdapterConfig.rank must be a positive int, got {self.rank!r}")
    if not isinstance(self.num_experts, int) or self.num_experts < 1:
      raise ValueError(
          f"AdapterConfig.num_experts must be a positive int, got {self.num_experts!r}")
    if self.kind == "lora" and self.num_experts != 1:
      raise ValueError(
          f"AdapterConfig.num_experts must be 1 for kind='lora', got {self.num_experts}")
    if self.kind == "mode":
      p = self.expert_rank
      if not isinstance(p, int) or p < 1 or self.rank % p:
        raise ValueError(
            f"AdapterConfig.expert_rank={p!r} must be a positive divisor of rank={self.rank}")
    elif self.expert_rank != 1:
      raise ValueError(f"AdapterConfig.expert_rank={self.expert_rank!r} applies to kind='mode' "
                       f"only; leave it at 1 for kind={self.kind!r}")
    targets = tuple(self.targets)
    object.__setattr__(self, "targets", targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets or len(set(targets)) != len(targets):
      raise ValueError(
          f"AdapterConfig.targets={targets!r}; allowed: non-empty, distinct, from {TARGETS}")
    for f in ("a_init_scale", "b_init_scale", "router_init_scale"):
      if getattr(self, f) < 0:
        raise ValueError(f"AdapterConfig.{f} must be >= 0, got {getattr(self, f)}")

  @property
  def scale(self) -> float:
    """s = alpha / R."""
    return (self.rank if self.alpha is None else self.alpha) / self.rank

  @property
  def num_groups(self) -> int:
    """G = R / p for MoDE (1 for the other kinds)."""
    return self.rank // self.expert_rank if self.kind == "mode" else 1
