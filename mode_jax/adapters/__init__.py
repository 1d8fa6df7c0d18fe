"""The adapter family: LoRA, MoLoRA, MoLoRA-SD, MoDE, FlyLoRA and SMoRA (METHODS.md).

Each kind is declared once, in its module, as a `registry.Kind`; importing
this package registers them all.

Public API:
  AdapterConfig, make_adapter, count_params, registry, KINDS, AdapterParam,
  AdapterState, BalancingBias, FROZEN_BASE, TRAINABLE, ADAPTER.
"""

from __future__ import annotations

from flax import nnx

# Importing a kind's module registers it; this order is the order of KINDS.
from mode_jax.adapters import lora  # isort: skip
from mode_jax.adapters import molora  # isort: skip
from mode_jax.adapters import mode  # isort: skip
from mode_jax.adapters import flylora  # isort: skip
from mode_jax.adapters import smora  # isort: skip
from mode_jax.adapters import counting
from mode_jax.adapters import registry
from mode_jax.adapters.config import TARGETS, AdapterConfig
from mode_jax.adapters.counting import count_params
from mode_jax.adapters.variables import (ADAPTER, FROZEN_BASE, TRAINABLE, AdapterParam,
                                         AdapterState, BalancingBias)

KINDS = registry.names()


def make_adapter(cfg: AdapterConfig, in_features: int, out_features: int,
                 rngs: nnx.Rngs, *, in_axis: str | None = None,
                 out_axis: str | None = None) -> nnx.Module:
  """Builds the registered kind's adapter; its call on x [..., P] returns dy [..., Q].

  Args:
    cfg: the adapter configuration.
    in_features: P.
    out_features: Q.
    rngs: random streams (uses `params`).
    in_axis: logical axis name of the P dimension (for sharding).
    out_axis: logical axis name of the Q dimension.
  """
  return registry.get(cfg.kind).build(cfg, in_features, out_features, rngs,
                                      in_axis=in_axis, out_axis=out_axis)
