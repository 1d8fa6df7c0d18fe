"""Optimizers and learning-rate schedules (Optax)."""

from __future__ import annotations

import dataclasses

import optax

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("constant", "cosine", "linear", "rsqrt")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimizer of the adapter parameters; the paper's is Adafactor at 1e-3.

  Attributes:
    name: one of OPTIMIZERS.
    learning_rate: peak learning rate.
    schedule: decay after warm-up, one of SCHEDULES.
    warmup_steps: linear warm-up from 0.
    weight_decay: decoupled weight decay (AdamW only).
    clip_norm: global-norm gradient clipping (None: off).
    b1, b2: AdamW moments.
  """
  name: str = "adafactor"
  learning_rate: float = 1e-3
  schedule: str = "constant"
  warmup_steps: int = 0
  weight_decay: float = 0.0
  clip_norm: float | None = 1.0
  b1: float = 0.9
  b2: float = 0.999

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"OptimizerConfig.name={self.name!r}; allowed: {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}; allowed: {SCHEDULES}")
    if self.learning_rate <= 0:
      raise ValueError(f"OptimizerConfig.learning_rate must be > 0, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ValueError(f"OptimizerConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.clip_norm is not None and self.clip_norm <= 0:
      raise ValueError(f"OptimizerConfig.clip_norm must be > 0 or None, got {self.clip_norm}")


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Linear warm-up to the peak, then the configured decay."""
  peak, warm = cfg.learning_rate, cfg.warmup_steps
  decay_steps = max(total_steps - warm, 1)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(peak)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(peak, 0.0, decay_steps)
  else:  # rsqrt, T5X's default shape
    after = lambda step: peak * (max(warm, 1) ** 0.5) / ((step + max(warm, 1)) ** 0.5)
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), after], [warm])


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> tuple[
    optax.GradientTransformation, optax.Schedule]:
  """The gradient transformation (with clipping) and its schedule."""
  schedule = make_schedule(cfg, total_steps)
  if cfg.name == "adafactor":
    opt = optax.adafactor(learning_rate=schedule, multiply_by_parameter_scale=False,
                          clipping_threshold=None)
  else:
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
  if cfg.clip_norm is not None:
    opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
  return opt, schedule
