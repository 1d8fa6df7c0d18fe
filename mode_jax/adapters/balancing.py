"""Rule-based (non-gradient) updates of adapter balancing biases.

An adapter with a balancing bias keeps it as an `AdapterState` variable named
`bias` and, during the forward pass, records `{"counts": c, "rate": u}` under
its name through `routing.collect` (c: per-column selection counts of the
batch). After the optimizer update the train step calls `update`, which
applies d_i += u * sign(mean(c) - c_i) (FlyLoRA / SMoRA). Only training calls
it: evaluation and decoding never touch the biases. Adapters without biases
make this the identity. With gradient accumulation the train step sums the
counts over micro-batches (integers, exact in float32, so ties keep sign 0).
Counts cover every token position the adapter sees, padding included.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mode_jax.adapters import variables


def init_selection(module: nnx.Module, cfg, name: str) -> None:
  """The attributes every top-k rank-wise adapter shares (FlyLoRA, SMoRA).

  Sets the delta scale, the statistics name, k, the bias rate and a zero
  balancing bias [R] (non-trained `AdapterState`). Draws no random numbers.
  """
  module.scale = cfg.scale
  module.name = name
  module.top_k = cfg.top_k
  module.bias_rate = cfg.bias_rate
  module.bias = variables.AdapterState(jnp.zeros((cfg.rank,), jnp.float32),
                                       logical_axes=("rank",))


def sign_rule(bias_r, counts_r, rate):
  """d_i + rate * sign(mean(c) - c_i)."""
  step = rate * jnp.sign(jnp.mean(counts_r, axis=-1, keepdims=True) - counts_r)
  return (bias_r + step).astype(bias_r.dtype)


def update(adapter_state: nnx.State, stats: dict) -> nnx.State:
  """Returns `adapter_state` with every recorded bias rule applied.

  The bias at `<name>/adapter/bias` is updated from `stats[<name>]` when that
  entry holds "counts" and "rate".
  """
  if not stats:
    return adapter_state
  flat = []
  for path, var in adapter_state.flat_state():
    entry = stats.get("/".join(map(str, path[:-2])), {}) if path[-1] == "bias" else {}
    if "counts" in entry:
      var = var.replace(sign_rule(var.get_value(), entry["counts"], entry["rate"]))
    flat.append((path, var))
  return nnx.State.from_flat_path(flat)
