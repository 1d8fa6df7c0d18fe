"""Routers of the mixture adapters: float32 gates, top-k masks, statistics.

Top-k ties are deterministic: `jax.lax.top_k` keeps the lower index of two
equal scores, so `topk_mask` of [1, 1, 1] with k = 2 selects columns 0 and 1.

Legend: D input features (P), G routed groups, E experts, N scored columns
(experts or rank columns), K kept per row.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax
import jax.numpy as jnp

# Routing statistics are gathered functionally, not sown into modules, so a
# model can be called inside any jax transformation without mutation.
_COLLECTOR: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "mode_jax_routing", default=None)


@contextlib.contextmanager
def collect() -> Iterator[dict]:
  """Collects {adapter name: {"entropy": [], "load": [E], ...}} of calls made inside.

  Entries may also hold "counts" [N] and "rate" (balancing-bias adapters,
  read by `balancing.update`) and "aux_loss" with its "aux_weight" (added to
  the training loss by the train step).

  Used inside a traced loss function: the dict's arrays are tracers of that
  trace and are returned as auxiliary outputs.
  """
  stats: dict = {}
  token = _COLLECTOR.set(stats)
  try:
    yield stats
  finally:
    _COLLECTOR.reset(token)


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


def record(name: str, w_tge: jax.Array | None, **extra: jax.Array) -> None:
  """Records mean router entropy and mean expert load of gates w [..., G, E].

  A no-op outside `collect()`. Load is averaged over tokens and groups and
  sums to one over experts. `extra` entries (e.g. counts, rate, aux_loss,
  aux_weight) are stored beside them; with `w_tge=None` only those are.
  """
  stats = _COLLECTOR.get()
  if stats is None:
    return
  entry = {}
  if w_tge is not None:
    e = w_tge.shape[-1]
    w = w_tge.reshape(-1, e)
    entry["entropy"] = -jnp.sum(w * jnp.log(jnp.clip(w, 1e-9, 1.0)), axis=-1).mean()
    entry["load"] = w.mean(axis=0)
  entry.update({k: jnp.asarray(v, jnp.float32) for k, v in extra.items()})
  key = name or f"adapter_{len(stats)}"
  while key in stats:  # the same module called twice
    key += "'"
  stats[key] = entry


def record_selection(name: str, mask_tr: jax.Array, rate: float) -> None:
  """Records the per-column selection counts of a top-k mask [..., R].

  The counts and the bias `rate` drive `balancing.update`; the normalised
  counts are logged as the load.
  """
  r = mask_tr.shape[-1]
  counts_r = mask_tr.reshape(-1, r).sum(0)
  record(name, None, counts=counts_r, rate=rate,
         load=counts_r / jnp.maximum(counts_r.sum(), 1.0))


def aux_loss(stats: dict) -> jax.Array:
  """sum over adapters of aux_weight * aux_loss (0.0 when none is recorded)."""
  terms = [s["aux_weight"] * s["aux_loss"] for s in stats.values() if "aux_loss" in s]
  return sum(terms, jnp.zeros((), jnp.float32))


def summarize(stats: dict) -> dict:
  """Scalar logging view: per adapted matrix entropy, max/min expert load and
  balancing loss; their means; and `aux_loss`, the weighted sum that the
  train step adds to the loss (only when some adapter records one)."""
  out = {}
  for name, s in stats.items():
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
