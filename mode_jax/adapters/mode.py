"""MoDE m x R x p: Mixture of Dyadic Experts (generalised to expert rank p).

h = x @ lora_a (R values); the R columns form G = R / p groups of p; group g
has its own float32 softmax over E experts, w[t, g, e]. Column j gets the
mixed up-projection row sum_e w[g(j), e] lora_b[e, j, :], so

    dy = s * einsum('tje,ejq->tq', u, lora_b),  u[t, j, e] = h[t, j] w[t, g(j), e]

one contraction over (j, e): the cost of a rank E*R up-projection plus the
router, with no Python loop and no [tokens, R, Q] intermediate.

Legend: D input features (P), F output features (Q), R rank, G groups,
E experts, p expert rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax.adapters import config as config_lib
from mode_jax.adapters import lora
from mode_jax.adapters import routing
from mode_jax.adapters import variables


class MoDE(nnx.Module):
  """`lora_a [P,R]`, `lora_b [E,R,Q]`, `router [P,G,E]`."""

  def __init__(self, cfg: config_lib.AdapterConfig, in_features: int,
               out_features: int, rngs: nnx.Rngs, *, in_axis=None, out_axis=None, name: str = ""):
    e, r, g = cfg.num_experts, cfg.rank, cfg.num_groups
    self.scale = cfg.scale
    self.name = name
    self.expert_rank = cfg.expert_rank
    self.lora_a = variables.AdapterParam(
        lora.init_normal(rngs, (in_features, r), cfg.a_init_scale),
        logical_axes=(in_axis, "rank"))
    self.lora_b = variables.AdapterParam(
        lora.init_normal(rngs, (e, r, out_features), cfg.b_init_scale),
        logical_axes=("expert", "rank", out_axis))
    self.router = variables.AdapterParam(
        lora.init_normal(rngs, (in_features, g, e), cfg.router_init_scale),
        logical_axes=(in_axis, "groups", "expert"))

  def gates(self, x_td: jax.Array) -> jax.Array:
    """float32 gates [..., G, E]."""
    return routing.softmax_gates(x_td, self.router[...])

  def __call__(self, x_td: jax.Array) -> jax.Array:
    w_tge = self.gates(x_td)
    routing.record(self.name, w_tge)
    h_tr = jnp.einsum("...d,dr->...r", x_td, self.lora_a[...].astype(x_td.dtype))
    g, e = w_tge.shape[-2:]
    p = self.expert_rank
    h_tgp = h_tr.astype(jnp.float32).reshape(*h_tr.shape[:-1], g, p)
    u_tre = (h_tgp[..., :, :, None] * w_tge[..., :, None, :]).reshape(
        *h_tr.shape[:-1], g * p, e)
    b_erf = self.lora_b[...].astype(x_td.dtype)
    dy_tf = jnp.einsum("...re,erf->...f", u_tre.astype(x_td.dtype), b_erf)
    return (self.scale * dy_tf).astype(x_td.dtype)
