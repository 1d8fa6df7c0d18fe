"""Routers of the mixture adapters: float32 gates, top-k masks, statistics.

Top-k ties are deterministic: `jax.lax.top_k` keeps the lower index of two
equal scores, so `topk_mask` of [1, 1, 1] with k = 2 selects columns 0 and 1.

Statistics leave an adapter as a value, never through a global: each call
sows one entry as the adapter's `RoutingStats` variable `routing` (an
`nnx.Intermediate`), and whoever runs the model pops them (`pop`). They are
ordinary state, so `nnx.scan`, `nnx.remat`, `jax.checkpoint` and a
`jax.lax.scan` over split layers carry them like any other output (the
scanned transformer returns them stacked along its layer axis).

An entry holds "entropy" (mean router entropy) and "load" [E] (mean gate per
expert, sums to one) for gated mixtures; "counts" [N] (selections per rank
column) and "load" for top-k selections; and "aux_loss" with "aux_weight"
for an adapter with a balancing loss (MoDE top-k). Each value gains a
leading layer axis when the adapter sits in scanned layers.

Legend: D input features (P), G routed groups, E experts, N scored columns
(experts or rank columns), K kept per row, L layers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class RoutingStats(nnx.Intermediate):
  """Statistics of an adapter's last call: a dict of float32 arrays."""


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


def topk_mask(scores_tn: jax.Array, k: int) -> jax.Array:
  """float32 0/1 mask [..., N] of the k largest scores of each row.

  Exactly k ones per row; ties go to the lower index (`jax.lax.top_k`). The
  mask carries no gradient (the selection is not differentiable).
  """
  n = scores_tn.shape[-1]
  _, idx_tk = jax.lax.top_k(jax.lax.stop_gradient(scores_tn), k)
  return jnp.sum(jax.nn.one_hot(idx_tk, n, dtype=jnp.float32), axis=-2)


def topk_softmax_gates(logits_tge: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Softmax gates kept on the top-k experts of each group, renormalised.

  Args:
    logits_tge: float32 router logits [..., G, E].
    k: experts kept per (token, group), 1 <= k <= E.

  Returns:
    (gates [..., G, E], zero off the top-k and summing to one over E;
     Switch-style balancing loss, a float32 scalar: E * sum_e f_e P_e,
     averaged over groups, with f_e the fraction of (token, top-k slot)
     pairs on expert e and P_e the mean dense softmax probability.)
  """
  e = logits_tge.shape[-1]
  mask_tge = topk_mask(logits_tge, k)
  # Softmax restricted to the kept experts = renormalised dense softmax.
  w_tge = jax.nn.softmax(jnp.where(mask_tge > 0, logits_tge, -jnp.inf), axis=-1)
  prob_ge = jax.nn.softmax(logits_tge, axis=-1).reshape(-1, *logits_tge.shape[-2:]).mean(0)
  frac_ge = mask_tge.reshape(-1, *logits_tge.shape[-2:]).mean(0) / k
  aux = e * jnp.mean(jnp.sum(frac_ge * prob_ge, axis=-1))
  return w_tge, aux


def gate_stats(w_tge: jax.Array) -> dict[str, jax.Array]:
  """Mean router entropy and mean expert load [E] of gates w [..., G, E]."""
  e = w_tge.shape[-1]
  w = w_tge.reshape(-1, e)
  return {"entropy": -jnp.sum(w * jnp.log(jnp.clip(w, 1e-9, 1.0)), axis=-1).mean(),
          "load": w.mean(axis=0)}


def selection_stats(mask_tr: jax.Array) -> dict[str, jax.Array]:
  """Per-column selection counts [R] of a top-k mask [..., R], and their shares."""
  r = mask_tr.shape[-1]
  counts_r = mask_tr.reshape(-1, r).sum(0)
  return {"counts": counts_r, "load": counts_r / jnp.maximum(counts_r.sum(), 1.0)}


def sow(module: nnx.Module, entry: dict[str, Any]) -> None:
  """Stores `entry` (float32) as `module.routing`, replacing an earlier call's.

  What `nnx.Module.sow` does, except that each call sets a fresh variable
  instead of appending to the old one: a module merged in one trace and
  called again inside a nested one (the body of a decode loop) must not
  mutate a variable of the outer trace.
  """
  module.routing = RoutingStats({k: jnp.asarray(v, jnp.float32) for k, v in entry.items()})


def put(module: nnx.Module, stats: nnx.State) -> None:
  """Sets popped statistics (`nnx.pop(..., RoutingStats)`) back on `module`'s submodules.

  Fresh variables, like `sow`; raises flax's TraceContextError when `module`
  belongs to an outer trace.
  """
  for path, var in stats.flat_state():
    sub = module
    for k in path[:-1]:
      sub = sub[k] if isinstance(k, int) else getattr(sub, k)
    setattr(sub, path[-1], RoutingStats(var.get_value()))


def from_state(state: nnx.State) -> dict[str, dict]:
  """{module path: entry} of a state of RoutingStats (e.g. from `nnx.pop`).

  The key is the path of the adapter module that sowed the entry
  ("layers/0/attn/q/adapter"): the same structure that holds its balancing
  bias, which is how `balancing.update` pairs them.
  """
  return {"/".join(map(str, path[:-1])): var.get_value()
          for path, var in state.flat_state() if var.get_value() is not None}


def pop(model: nnx.Module) -> dict[str, dict]:
  """Removes the statistics sown in `model` and returns them by module path."""
  return from_state(nnx.pop(model, RoutingStats))


def by_matrix(stats: dict[str, dict]) -> dict[str, dict]:
  """Per adapted matrix and layer: {"layers/0/attn/q": entry}, for logs.

  Drops the trailing "adapter" (the attribute of `layers.linear.Projection`)
  and splits entries of scanned layers (their "load" has a leading layer
  axis) into one per layer named as in the looped model, so both layouts
  log the same names.
  """
  out = {}
  for key, entry in stats.items():
    parts = key.split("/")
    if parts[-1] == "adapter":
      parts = parts[:-1]
    if entry["load"].ndim == 1:
      out["/".join(parts)] = entry
      continue
    for i in range(entry["load"].shape[0]):  # scanned: parts[0] is the stack
      out["/".join([parts[0], str(i)] + parts[1:])] = {k: v[i] for k, v in entry.items()}
  return out


def aux_loss(stats: dict) -> jax.Array:
  """sum over adapters (and layers) of aux_weight * aux_loss; 0.0 when none."""
  terms = [jnp.sum(s["aux_weight"] * s["aux_loss"]) for s in stats.values() if "aux_loss" in s]
  return sum(terms, jnp.zeros((), jnp.float32))


def summarize(stats: dict) -> dict:
  """Scalar logging view: per adapted matrix entropy, max/min expert load and
  balancing loss; their means; and `aux_loss`, the weighted sum that the
  train step adds to the loss (only when some adapter sows one)."""
  out = {}
  for name, s in by_matrix(stats).items():
    if "entropy" in s:
      out[f"{name}/entropy"] = s["entropy"]
    if "load" in s:
      out[f"{name}/load_max"] = jnp.max(s["load"])
      out[f"{name}/load_min"] = jnp.min(s["load"])
    if "aux_loss" in s:
      out[f"{name}/aux_loss"] = s["aux_loss"]
  entropies = [v for k, v in out.items() if k.endswith("/entropy")]
  if entropies:
    out["mean_entropy"] = jnp.mean(jnp.stack(entropies))
  if any("aux_loss" in s for s in stats.values()):
    out["aux_loss"] = aux_loss(stats)
  return out
