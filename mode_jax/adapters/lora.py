"""LoRA: dy = s * (x @ lora_a) @ lora_b.

Legend: D input features (P), F output features (Q), R rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax.adapters import config as config_lib
from mode_jax.adapters import registry
from mode_jax.adapters import variables


def init_normal(rngs: nnx.Rngs, shape, std: float) -> jax.Array:
  """N(0, std^2) in float32 (zeros when std is 0)."""
  if std == 0:
    return jnp.zeros(shape, jnp.float32)
  return std * jax.random.normal(rngs.params(), shape, jnp.float32)


class LoRA(nnx.Module):
  """Low-rank adapter with `lora_a [P,R]` and `lora_b [R,Q]`."""

  def __init__(self, cfg: config_lib.AdapterConfig, in_features: int,
               out_features: int, rngs: nnx.Rngs, *, in_axis=None, out_axis=None):
    self.scale = cfg.scale
    self.lora_a = variables.AdapterParam(
        init_normal(rngs, (in_features, cfg.rank), cfg.a_init_scale),
        logical_axes=(in_axis, "rank"))
    self.lora_b = variables.AdapterParam(
        init_normal(rngs, (cfg.rank, out_features), cfg.b_init_scale),
        logical_axes=("rank", out_axis))

  def __call__(self, x_td: jax.Array) -> jax.Array:
    a_dr = self.lora_a[...].astype(x_td.dtype)
    b_rf = self.lora_b[...].astype(x_td.dtype)
    h_tr = jnp.einsum("...d,dr->...r", x_td, a_dr)
    return (self.scale * jnp.einsum("...r,rf->...f", h_tr, b_rf)).astype(x_td.dtype)


def count(cfg: config_lib.AdapterConfig, p: int, q: int) -> dict[str, int]:
  return {"trainable": cfg.rank * (p + q), "frozen": 0}


registry.register(registry.Kind(
    name="lora", display="LoRA", build=LoRA, count=count, gin_macros=("RANK", "TARGETS"),
    examples=({"rank": 4},)))
