"""MoLoRA (E full LoRA experts) and MoLoRA-SD (shared down-projection).

MoLoRA:    dy = s * sum_e w_e (x @ lora_a[e]) @ lora_b[e]
MoLoRA-SD: dy = s * sum_e w_e (x @ lora_a) @ lora_b[e]
with w = softmax(x @ router) in float32. Both contract experts and rank in
one einsum; no loop over experts.

Legend: D input features (P), F output features (Q), R rank, E experts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax.adapters import config as config_lib
from mode_jax.adapters import lora
from mode_jax.adapters import registry
from mode_jax.adapters import routing
from mode_jax.adapters import variables


class MoLoRA(nnx.Module):
  """`lora_a [E,P,R]` (or `[P,R]` when shared_down), `lora_b [E,R,Q]`, `router [P,E]`."""

  def __init__(self, cfg: config_lib.AdapterConfig, in_features: int,
               out_features: int, rngs: nnx.Rngs, *, shared_down: bool = False,
               in_axis=None, out_axis=None):
    e, r = cfg.num_experts, cfg.rank
    self.scale = cfg.scale
    self.shared_down = shared_down
    if shared_down:
      self.lora_a = variables.AdapterParam(
          lora.init_normal(rngs, (in_features, r), cfg.a_init_scale),
          logical_axes=(in_axis, "rank"))
    else:
      self.lora_a = variables.AdapterParam(
          lora.init_normal(rngs, (e, in_features, r), cfg.a_init_scale),
          logical_axes=("expert", in_axis, "rank"))
    self.lora_b = variables.AdapterParam(
        lora.init_normal(rngs, (e, r, out_features), cfg.b_init_scale),
        logical_axes=("expert", "rank", out_axis))
    self.router = variables.AdapterParam(
        lora.init_normal(rngs, (in_features, e), cfg.router_init_scale),
        logical_axes=(in_axis, "expert"))

  def __call__(self, x_td: jax.Array) -> jax.Array:
    w_te = routing.softmax_gates(x_td, self.router[...][:, None, :])[..., 0, :]
    routing.sow(self, routing.gate_stats(w_te[..., None, :]))
    a = self.lora_a[...].astype(x_td.dtype)
    if self.shared_down:
      h_tr = jnp.einsum("...d,dr->...r", x_td, a)
      u_ter = w_te[..., :, None] * h_tr[..., None, :].astype(jnp.float32)
    else:
      h_ter = jnp.einsum("...d,edr->...er", x_td, a)
      u_ter = w_te[..., :, None] * h_ter.astype(jnp.float32)
    # (e, r) flattens to the row index of lora_b viewed as [E*R, F]: one plain
    # matmul (a two-dimension contraction is 2-3x slower on CPU).
    e, r, f = self.lora_b.shape
    u_tk = u_ter.reshape(*u_ter.shape[:-2], e * r).astype(x_td.dtype)
    b_kf = self.lora_b[...].astype(x_td.dtype).reshape(e * r, f)
    dy_tf = jnp.einsum("...k,kf->...f", u_tk, b_kf)
    return (self.scale * dy_tf).astype(x_td.dtype)


def count(cfg: config_lib.AdapterConfig, p: int, q: int) -> dict[str, int]:
  e, r = cfg.num_experts, cfg.rank
  return {"trainable": e * r * (p + q) + e * p, "frozen": 0}


def count_sd(cfg: config_lib.AdapterConfig, p: int, q: int) -> dict[str, int]:
  e, r = cfg.num_experts, cfg.rank
  return {"trainable": r * p + e * r * q + e * p, "frozen": 0}


_MACROS = ("RANK", "EXPERTS", "TARGETS")
registry.register(registry.Kind(
    name="molora", display="MoLoRA", build=MoLoRA, count=count, gin_macros=_MACROS,
    options={"num_experts"}, examples=({"rank": 4, "num_experts": 3},)))
registry.register(registry.Kind(
    name="molora_sd", display="MoLoRA-SD", build=functools.partial(MoLoRA, shared_down=True),
    count=count_sd, gin_macros=_MACROS, options={"num_experts"},
    examples=({"rank": 4, "num_experts": 3},)))
