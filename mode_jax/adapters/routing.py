"""Routers of the mixture adapters: float32 softmax gates and their statistics.

Legend: D input features (P), G routed groups, E experts.
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
  """Collects {adapter name: {"entropy": [], "load": [E]}} of calls made inside.

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


def record(name: str, w_tge: jax.Array) -> None:
  """Records mean router entropy and mean expert load of gates w [..., G, E].

  A no-op outside `collect()`. Load is averaged over tokens and groups and
  sums to one over experts.
  """
  stats = _COLLECTOR.get()
  if stats is None:
    return
  e = w_tge.shape[-1]
  w = w_tge.reshape(-1, e)
  entropy = -jnp.sum(w * jnp.log(jnp.clip(w, 1e-9, 1.0)), axis=-1).mean()
  load_e = w.mean(axis=0)
  key = name or f"adapter_{len(stats)}"
  while key in stats:  # the same module called twice
    key += "'"
  stats[key] = {"entropy": entropy, "load": load_e}


def summarize(stats: dict) -> dict:
  """Scalar logging view: per adapted matrix entropy and max/min expert load."""
  out = {}
  for name, s in stats.items():
    if "entropy" in s:
      out[f"{name}/entropy"] = s["entropy"]
      out[f"{name}/load_max"] = jnp.max(s["load"])
      out[f"{name}/load_min"] = jnp.min(s["load"])
  if out:
    out["mean_entropy"] = jnp.mean(jnp.stack([v for k, v in out.items()
                                              if k.endswith("/entropy")]))
  return out
