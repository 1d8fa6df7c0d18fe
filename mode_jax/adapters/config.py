"""AdapterConfig: which adapter, with which shapes, on which matrices."""

from __future__ import annotations

import dataclasses

KINDS = ("lora", "molora", "molora_sd", "mode", "flylora", "smora")
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# Kinds with one top-k over the R rank columns and a balancing bias.
RANK_TOPK_KINDS = ("flylora", "smora")
# Published defaults (METHODS.md, "Two later rank-wise mixtures").
DEFAULT_TOP_K = 8
DEFAULT_BIAS_RATE = {"flylora": 1e-3, "smora": 1e-5}


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Chooses the adapter kind, its shapes and the adapted matrices.

  Attributes:
    kind: one of KINDS.
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
    if self.kind not in KINDS:
      raise ValueError(f"AdapterConfig.kind={self.kind!r}; allowed: {KINDS}")
    if not isinstance(self.rank, int) or self.rank < 1:
      raise ValueError(f"AdapterConfig.rank must be a positive int, got {self.rank!r}")
    if not isinstance(self.num_experts, int) or self.num_experts < 1:
      raise ValueError(
          f"AdapterConfig.num_experts must be a positive int, got {self.num_experts!r}")
    if self.kind in ("lora",) + RANK_TOPK_KINDS and self.num_experts != 1:
      raise ValueError(f"AdapterConfig.num_experts must be 1 for kind={self.kind!r} "
                       f"(it has no experts), got {self.num_experts}")
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
    if self.alpha is not None and not self.alpha > 0:
      raise ValueError(f"AdapterConfig.alpha must be > 0 or None, got {self.alpha!r}")
    self._check_routing()

  def _check_routing(self):
    """Validates (and resolves the defaults of) top_k, bias_rate, density, aux_loss_weight."""
    k = self.top_k
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
      raise ValueError(f"AdapterConfig.top_k must be a positive int or None, got {k!r}")
    if self.kind in RANK_TOPK_KINDS:
      if k is None:
        k = min(DEFAULT_TOP_K, self.rank)
        object.__setattr__(self, "top_k", k)
      if k > self.rank:
        raise ValueError(f"AdapterConfig.top_k={k} must be <= rank={self.rank} "
                         f"for kind={self.kind!r}")
    elif self.kind == "mode":
      if k is not None and k > self.num_experts:
        raise ValueError(f"AdapterConfig.top_k={k} must be <= num_experts="
                         f"{self.num_experts} for kind='mode' (None = dense)")
    elif k is not None:
      raise ValueError(f"AdapterConfig.top_k applies to kinds {('mode',) + RANK_TOPK_KINDS}; "
                       f"leave it None for kind={self.kind!r}")

    if self.kind in RANK_TOPK_KINDS:
      if self.bias_rate is None:
        object.__setattr__(self, "bias_rate", DEFAULT_BIAS_RATE[self.kind])
      elif not self.bias_rate >= 0:
        raise ValueError(f"AdapterConfig.bias_rate must be >= 0, got {self.bias_rate!r}")
    elif self.bias_rate is not None:
      raise ValueError(f"AdapterConfig.bias_rate applies to kinds {RANK_TOPK_KINDS}; "
                       f"leave it None for kind={self.kind!r}")

    if self.kind == "flylora":
      if self.density is not None and not 0 < self.density <= 1:
        raise ValueError(f"AdapterConfig.density must be in (0, 1] or None, "
                         f"got {self.density!r}")
    elif self.density is not None:
      raise ValueError(f"AdapterConfig.density applies to kind='flylora' only; "
                       f"leave it None for kind={self.kind!r}")

    w = self.aux_loss_weight
    if not w >= 0:
      raise ValueError(f"AdapterConfig.aux_loss_weight must be >= 0, got {w!r}")
    if w > 0 and not (self.kind == "mode" and self.sparse_experts):
      raise ValueError("AdapterConfig.aux_loss_weight > 0 needs kind='mode' with top_k < "
                       f"num_experts (got kind={self.kind!r}, top_k={self.top_k!r}, "
                       f"num_experts={self.num_experts})")

  @property
  def scale(self) -> float:
    """s = alpha / R (alpha / top_k for SMoRA)."""
    denom = self.top_k if self.kind == "smora" else self.rank
    return (denom if self.alpha is None else self.alpha) / denom

  @property
  def num_groups(self) -> int:
    """G = R / p for MoDE (1 for the other kinds)."""
    return self.rank // self.expert_rank if self.kind == "mode" else 1

  @property
  def sparse_experts(self) -> bool:
    """MoDE keeps top_k < E experts per group (False: today's dense MoDE)."""
    return self.kind == "mode" and self.top_k is not None and self.top_k < self.num_experts

