"""Routers of the mixture adapters: float32 softmax gates and their statistics.

Legend: D input features (P), G routed groups, E experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class RoutingStats(nnx.Intermediate):
  """Per-call routing statistics sown by mixture adapters (for logging)."""


def softmax_gates(x_td: jax.Array, router_dge: jax.Array) -> jax.Array:
  """Dense softmax gates `w[t, g, e] = softmax_e(x[t] @ router[:, g, :])`.

  Args:
    x_td: tokens, [..., D].
    router_dge: router weights, [D, G, E].

  Returns:
    float32 gates [..., G, E] summing to one over E.
  """
  logits_tge = jnp.einsum("...d,dge->...ge", x_td.astype(jnp.float32),
                          router_dge.astype(jnp.float32))
  return jax.nn.softmax(logits_tge, axis=-1)


def record(module: nnx.Module, w_tge: jax.Array) -> None:
  """Sows mean router entropy and mean expert load of gates w [..., G, E]."""
  e = w_tge.shape[-1]
  w = w_tge.reshape(-1, e)
  entropy = -jnp.sum(w * jnp.log(jnp.clip(w, 1e-9, 1.0)), axis=-1).mean()
  load_e = w.mean(axis=0)
  module.sow(RoutingStats, "routing", {"entropy": entropy, "load": load_e})
