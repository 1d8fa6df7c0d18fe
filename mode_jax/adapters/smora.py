"""SMoRA: every rank column is an expert, with a sigmoid top-k router.

With h = x @ lora_a and scores s = sigmoid(x @ router) (float32), the active
set is the top-k of s + b, b [R] a balancing bias; the gates on it are
g_i = k (s_i + b_i) / sum_{topk}(s + b), and

    dy = (alpha / k) * sum_{i in topk(s + b)} g_i h_i lora_b[i, :]

`lora_a [P,R]`, `lora_b [R,Q]` and `router [P,R]` train (the selection has
no gradient; the gates carry the router's). `bias` is `AdapterState`: read,
never written, by the forward pass; `balancing.update` applies
b_i += u * sign(mean(c) - c_i) after each training step from the per-column
selection counts c sown here (all tokens of the call are counted).

h and the router logits come from one float32 matmul of x with
[lora_a | router] (as in MoDE); the gated h then meets lora_b in one dense
[T,R] @ [R,Q] matmul with zeros off the top-k.

Legend: D input features (P), F output features (Q), R rank, T tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax.adapters import balancing
from mode_jax.adapters import config as config_lib
from mode_jax.adapters import lora
from mode_jax.adapters import registry
from mode_jax.adapters import routing
from mode_jax.adapters import variables


class SMoRA(nnx.Module):
  """`lora_a [P,R]`, `lora_b [R,Q]`, `router [P,R]` (trained), `bias [R]` (state)."""

  def __init__(self, cfg: config_lib.AdapterConfig, in_features: int,
               out_features: int, rngs: nnx.Rngs, *, in_axis=None, out_axis=None):
    r = cfg.rank
    balancing.init_selection(self, cfg)
    self.lora_a = variables.AdapterParam(
        lora.init_normal(rngs, (in_features, r), cfg.a_init_scale),
        logical_axes=(in_axis, "rank"))
    self.lora_b = variables.AdapterParam(
        lora.init_normal(rngs, (r, out_features), cfg.b_init_scale),
        logical_axes=("rank", out_axis))
    self.router = variables.AdapterParam(
        lora.init_normal(rngs, (in_features, r), cfg.router_init_scale),
        logical_axes=(in_axis, "rank"))

  def gates(self, x_td: jax.Array) -> jax.Array:
    """float32 gates g [..., R]: k (s + b) / sum_topk(s + b) on the top-k, else 0."""
    logits_tr = jnp.einsum("...d,dr->...r", x_td.astype(jnp.float32),
                           self.router[...].astype(jnp.float32))
    return self._gates(logits_tr)[0]

  def _gates(self, logits_tr):
    sb_tr = jax.nn.sigmoid(logits_tr) + jax.lax.stop_gradient(self.bias[...].astype(jnp.float32))
    mask_tr = routing.topk_mask(sb_tr, self.top_k)
    kept_tr = sb_tr * mask_tr
    g_tr = self.top_k * kept_tr / jnp.sum(kept_tr, axis=-1, keepdims=True)
    return g_tr, mask_tr

  def __call__(self, x_td: jax.Array) -> jax.Array:
    r = self.lora_a.shape[-1]
    a_dk = jnp.concatenate([self.lora_a[...].astype(jnp.float32),
                            self.router[...].astype(jnp.float32)], axis=-1)
    hl_tk = jnp.einsum("...d,dk->...k", x_td.astype(jnp.float32), a_dk)
    h_tr, logits_tr = hl_tk[..., :r], hl_tk[..., r:]
    g_tr, mask_tr = self._gates(logits_tr)
    routing.sow(self, routing.selection_stats(mask_tr))
    b_rf = self.lora_b[...].astype(x_td.dtype)
    dy_tf = jnp.einsum("...r,rf->...f", (g_tr * h_tr).astype(x_td.dtype), b_rf)
    return (self.scale * dy_tf).astype(x_td.dtype)


def count(cfg: config_lib.AdapterConfig, p: int, q: int) -> dict[str, int]:
  r = cfg.rank
  return {"trainable": r * p + r * q + p * r, "frozen": 0}


registry.register(registry.Kind(
    name="smora", display="SMoRA", build=SMoRA, count=count,
    gin_macros=("RANK", "TOP_K", "ALPHA", "BIAS_RATE", "TARGETS"),
    options={"top_k", "bias_rate"}, balancing=True, scale_by_top_k=True,
    validate=lambda cfg: balancing.validate_selection(cfg, default_bias_rate=1e-5),
    examples=({"rank": 8, "top_k": 3},)))
