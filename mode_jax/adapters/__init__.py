"""The adapter family: LoRA, MoLoRA, MoLoRA-SD, MoDE, FlyLoRA and SMoRA (METHODS.md).

Public API:
  AdapterConfig, make_adapter, count_params, AdapterParam, AdapterState,
  FROZEN_BASE, TRAINABLE, ADAPTER.
"""

from __future__ import annotations

from flax import nnx

from mode_jax.adapters import counting
from mode_jax.adapters import flylora
from mode_jax.adapters import lora
from mode_jax.adapters import mode
from mode_jax.adapters import molora
from mode_jax.adapters import smora
from mode_jax.adapters.config import KINDS, TARGETS, AdapterConfig
from mode_jax.adapters.counting import count_params
from mode_jax.adapters.variables import ADAPTER, FROZEN_BASE, TRAINABLE, AdapterParam, AdapterState


def make_adapter(cfg: AdapterConfig, in_features: int, out_features: int,
                 rngs: nnx.Rngs, *, in_axis: str | None = None,
                 out_axis: str | None = None, name: str = "") -> nnx.Module:
  """Builds one adapter whose call on x [..., P] returns dy [..., Q].

  Args:
    cfg: the adapter configuration.
    in_features: P.
    out_features: Q.
    rngs: random streams (uses `params`).
    in_axis: logical axis name of the P dimension (for sharding).
    out_axis: logical axis name of the Q dimension.
    name: the adapted matrix's path, used to label routing statistics.
  """
  kw = dict(in_axis=in_axis, out_axis=out_axis, name=name)
  if cfg.kind == "lora":
    return lora.LoRA(cfg, in_features, out_features, rngs, **kw)
  if cfg.kind == "molora":
    return molora.MoLoRA(cfg, in_features, out_features, rngs, **kw)
  if cfg.kind == "molora_sd":
    return molora.MoLoRA(cfg, in_features, out_features, rngs, shared_down=True, **kw)
  if cfg.kind == "mode":
    return mode.MoDE(cfg, in_features, out_features, rngs, **kw)
  if cfg.kind == "flylora":
    return flylora.FlyLoRA(cfg, in_features, out_features, rngs, **kw)
  if cfg.kind == "smora":
    return smora.SMoRA(cfg, in_features, out_features, rngs, **kw)
  raise ValueError(f"unknown adapter kind {cfg.kind!r}; allowed: {KINDS}")
