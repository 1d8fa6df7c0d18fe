"""FlyLoRA: a frozen sparse random down-projection as an implicit router.

h = x @ lora_a with `lora_a [P,R]` frozen, sparse and random (each column
has exactly n = round(rho * P) non-zeros drawn from N(0, 1/R^2)); the active
set of a token is the top-k of h + d, d [R] a balancing bias; and

    dy = (alpha / R) * sum_{j in topk(h + d)} h_j lora_b[j, :]

a 0/1 mask on h, no gate values. Only `lora_b [R,Q]` trains. `lora_a`, the
key it was drawn from (`seed`, raw uint32 key data) and `bias` are
`AdapterState`: saved with the adapter, never given a gradient. `bias` is
read, never written, by the forward pass; `balancing.update` applies
d_i += u * sign(mean(c) - c_i) after each training step from the per-column
selection counts c sown here (all tokens of the call are counted).

The masked product (h * mask) @ lora_b is a dense [T,R] @ [R,Q] matmul: at
R = 32 a gather of the k selected rows of lora_b per token would move k*Q
floats per token instead of streaming lora_b once (benchmarks/adapter_layer.py).

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


def nonzeros(cfg: config_lib.AdapterConfig, in_features: int) -> int:
  """n = round(rho * P) non-zeros per column (rho = density, or top_k / R), at least 1."""
  rho = cfg.density if cfg.density is not None else cfg.top_k / cfg.rank
  return max(1, min(in_features, int(round(rho * in_features))))


def sparse_projection(key_data: jax.Array, in_features: int, rank: int, nnz: int) -> jax.Array:
  """The frozen `lora_a [P,R]` drawn from raw key data (uint32 [2]).

  Each column keeps exactly `nnz` rows (the smallest of P uniform draws, so
  the count is exact), with values N(0, 1/R^2). Deterministic in the key:
  a restored or regenerated adapter gets the same array bit for bit.
  """
  key = jax.random.wrap_key_data(key_data)
  k_rows, k_vals = jax.random.split(key)
  u_dr = jax.random.uniform(k_rows, (in_features, rank), jnp.float32)
  row_rank_dr = jnp.argsort(jnp.argsort(u_dr, axis=0), axis=0)
  vals_dr = jax.random.normal(k_vals, (in_features, rank), jnp.float32) / rank
  return jnp.where(row_rank_dr < nnz, vals_dr, 0.0)


class FlyLoRA(nnx.Module):
  """Frozen `lora_a [P,R]` (state), trained `lora_b [R,Q]`, `bias [R]` (state)."""

  def __init__(self, cfg: config_lib.AdapterConfig, in_features: int,
               out_features: int, rngs: nnx.Rngs, *, in_axis=None, out_axis=None):
    r = cfg.rank
    balancing.init_selection(self, cfg)
    key = rngs.params()
    key_data = (jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                else key)
    self.seed = variables.AdapterState(key_data, logical_axes=(None,))
    self.lora_a = variables.AdapterState(
        sparse_projection(key_data, in_features, r, nonzeros(cfg, in_features)),
        logical_axes=(in_axis, "rank"))
    self.lora_b = variables.AdapterParam(
        lora.init_normal(rngs, (r, out_features), cfg.b_init_scale),
        logical_axes=("rank", out_axis))

  def __call__(self, x_td: jax.Array) -> jax.Array:
    # float32 h: the selection compares h across columns.
    a_dr = jax.lax.stop_gradient(self.lora_a[...].astype(jnp.float32))
    h_tr = jnp.einsum("...d,dr->...r", x_td.astype(jnp.float32), a_dr)
    d_r = jax.lax.stop_gradient(self.bias[...].astype(jnp.float32))
    mask_tr = routing.topk_mask(h_tr + d_r, self.top_k)
    routing.sow(self, routing.selection_stats(mask_tr))
    b_rf = self.lora_b[...].astype(x_td.dtype)
    dy_tf = jnp.einsum("...r,rf->...f", (h_tr * mask_tr).astype(x_td.dtype), b_rf)
    return (self.scale * dy_tf).astype(x_td.dtype)


def count(cfg: config_lib.AdapterConfig, p: int, q: int) -> dict[str, int]:
  """lora_b trains; the random lora_a is stored dense (P * R), never trained."""
  return {"trainable": cfg.rank * q, "frozen": p * cfg.rank}


registry.register(registry.Kind(
    name="flylora", display="FlyLoRA", build=FlyLoRA, count=count,
    gin_macros=("RANK", "TOP_K", "ALPHA", "DENSITY", "BIAS_RATE", "TARGETS"),
    options={"top_k", "bias_rate", "density"}, balancing=True,
    validate=lambda cfg: balancing.validate_selection(cfg, default_bias_rate=1e-3),
    examples=({"rank": 8, "top_k": 3},)))
