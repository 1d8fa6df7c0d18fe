"""MoDE m x R x p: Mixture of Dyadic Experts (generalised to expert rank p).

h = x @ lora_a (R values); the R columns form G = R / p groups of p; group g
has its own float32 softmax over E experts, w[t, g, e]. Column j gets the
mixed up-projection row sum_e w[g(j), e] lora_b[e, j, :], so

    dy = s * einsum('tje,ejq->tq', u, lora_b),  u[t, j, e] = h[t, j] w[t, g(j), e]

one contraction over (j, e): the cost of a rank E*R up-projection plus the
router, with no Python loop and no [tokens, R, Q] intermediate. It runs as a
plain matmul u[T, E*R] @ lora_b.reshape(E*R, Q): XLA:CPU ran the same
einsum with two contracting dimensions (j, e) 2-3x slower at Q = 16384
(transposes of lora_b and of its gradient; benchmarks/adapter_layer.py).

Optional top-k (cfg.top_k = k < E): each (token, group) keeps its k largest
softmax gates, renormalised to sum to one (the softmax over the kept
logits; ties go to the lower expert index), and the other gates are zero.
The contraction is the same dense u @ lora_b with zeros in u: on CPU it
runs in the time of dense MoDE, 2.5-7x faster than gathering the k*R
selected rows of lora_b per token (a [T, k*R, Q] tensor, 2 GiB at T = 4096,
Q = 16384; benchmarks/adapter_layer.py), so top-k saves no time here. With aux_loss_weight
> 0 the Switch-style balancing loss E * sum_e f_e P_e (mean over groups) is
sown for the train step to add. top_k None or = E is dense MoDE, by
the same code path as before.

Legend: D input features (P), F output features (Q), R rank, G groups,
E experts, p expert rank.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax.adapters import config as config_lib
from mode_jax.adapters import lora
from mode_jax.adapters import registry
from mode_jax.adapters import routing
from mode_jax.adapters import variables


class MoDE(nnx.Module):
  """`lora_a [P,R]`, `lora_b [E,R,Q]`, `router [P,G,E]`."""

  def __init__(self, cfg: config_lib.AdapterConfig, in_features: int,
               out_features: int, rngs: nnx.Rngs, *, in_axis=None, out_axis=None):
    e, r, g = cfg.num_experts, cfg.rank, cfg.num_groups
    self.scale = cfg.scale
    self.expert_rank = cfg.expert_rank
    # None: dense MoDE (top_k None or = E), the unchanged code path.
    self.top_k = cfg.top_k if cfg.sparse_experts else None
    self.aux_loss_weight = cfg.aux_loss_weight
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
    """float32 gates [..., G, E] (zero off the top-k when top_k < E)."""
    if self.top_k is None:
      return routing.softmax_gates(x_td, self.router[...])
    logits_tge = jnp.einsum("...d,dge->...ge", x_td.astype(jnp.float32),
                            self.router[...].astype(jnp.float32))
    return routing.topk_softmax_gates(logits_tge, self.top_k)[0]

  def __call__(self, x_td: jax.Array) -> jax.Array:
    r, (g, e) = self.lora_a.shape[-1], self.router.shape[-2:]
    p = self.expert_rank
    # h and the router logits come from one float32 matmul with [lora_a |
    # router]: one pass over x forward and backward instead of two (on CPU
    # the second pass cost MoDE ~15% of a LoRA 64 step at P = Q = 2048).
    # The router runs in float32 as before; h, too, is now float32.
    a_dk = jnp.concatenate([self.lora_a[...].astype(jnp.float32),
                            self.router[...].astype(jnp.float32).reshape(-1, g * e)], axis=-1)
    hl_tk = jnp.einsum("...d,dk->...k", x_td.astype(jnp.float32), a_dk)
    lead = hl_tk.shape[:-1]
    h_tgp = hl_tk[..., :r].reshape(*lead, g, p)
    if self.top_k is None:
      w_tge = jax.nn.softmax(hl_tk[..., r:].reshape(*lead, g, e), axis=-1)
      routing.sow(self, routing.gate_stats(w_tge))
    else:
      w_tge, aux = routing.topk_softmax_gates(hl_tk[..., r:].reshape(*lead, g, e), self.top_k)
      extra = dict(aux_loss=aux, aux_weight=self.aux_loss_weight) if self.aux_loss_weight else {}
      routing.sow(self, {**routing.gate_stats(w_tge), **extra})
    # u[t, e, j] = w[t, g(j), e] h[t, j], expert-major so that (e, j) flattens
    # to the row index of lora_b viewed as [E*R, F] (a free reshape).
    u_tegp = jnp.swapaxes(w_tge, -1, -2)[..., :, :, None] * h_tgp[..., None, :, :]
    u_tk = u_tegp.reshape(*lead, e * r).astype(x_td.dtype)
    b_kf = self.lora_b[...].astype(x_td.dtype).reshape(e * r, -1)
    dy_tf = jnp.einsum("...k,kf->...f", u_tk, b_kf)
    return (self.scale * dy_tf).astype(x_td.dtype)


def count(cfg: config_lib.AdapterConfig, p: int, q: int) -> dict[str, int]:
  e, r = cfg.num_experts, cfg.rank
  return {"trainable": r * p + e * r * q + cfg.num_groups * e * p, "frozen": 0}


def validate(cfg: config_lib.AdapterConfig) -> None:
  """p divides R; top_k <= E; a balancing loss needs sparse (top_k < E) routing."""
  if cfg.rank % cfg.expert_rank:
    raise ValueError(f"AdapterConfig.expert_rank={cfg.expert_rank!r} must be a positive "
                     f"divisor of rank={cfg.rank}")
  if cfg.top_k is not None and cfg.top_k > cfg.num_experts:
    raise ValueError(f"AdapterConfig.top_k={cfg.top_k} must be <= num_experts="
                     f"{cfg.num_experts} for kind='mode' (None = dense)")
  if cfg.aux_loss_weight > 0 and not cfg.sparse_experts:
    raise ValueError("AdapterConfig.aux_loss_weight > 0 needs kind='mode' with top_k < "
                     f"num_experts (got top_k={cfg.top_k!r}, num_experts={cfg.num_experts})")


registry.register(registry.Kind(
    name="mode", display="MoDE", build=MoDE, count=count,
    gin_macros=("RANK", "EXPERTS", "EXPERT_RANK", "TARGETS", "TOP_K", "AUX_LOSS_WEIGHT"),
    options={"num_experts", "expert_rank", "top_k", "aux_loss_weight"}, validate=validate,
    examples=({"rank": 4, "num_experts": 3, "expert_rank": 2},
              {"rank": 4, "num_experts": 3, "top_k": 2, "aux_loss_weight": 0.1})))
