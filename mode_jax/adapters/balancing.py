"""Rule-based (non-gradient) updates of adapter balancing biases.

An adapter with a balancing bias keeps it as a `variables.BalancingBias`
named `bias` (its step u in the variable's `rate` metadata) and, during the
forward pass, sows `{"counts": c, ...}` (`routing.sow`; c: per-column
selection counts of the batch). After the optimizer update the train step
calls `update`, which applies d_i += u * sign(mean(c) - c_i) (FlyLoRA /
SMoRA) to every BalancingBias whose module sowed counts. Bias and counts
are paired by the module that holds both (its path in the state), found by
type, so wrapping or scanning the layers changes nothing; in scanned layers
both carry a leading layer axis and the rule applies per layer. Only
training calls it: evaluation and decoding never touch the biases. Adapters
without biases make this the identity. With gradient accumulation the train
step sums the counts over micro-batches (integers, exact in float32, so
ties keep sign 0). Counts cover every token position the adapter sees,
padding included.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from mode_jax.adapters import variables


def validate_selection(cfg, default_bias_rate: float) -> dict:
  """Checks and defaults of a top-k rank-wise kind (FlyLoRA, SMoRA).

  top_k defaults to the published 8 capped at R and must be <= R; bias_rate
  defaults to the kind's published rate.
  """
  from mode_jax.adapters import config as config_lib  # pylint: disable=g-import-not-at-top
  k = cfg.top_k if cfg.top_k is not None else min(config_lib.DEFAULT_TOP_K, cfg.rank)
  if k > cfg.rank:
    raise ValueError(f"AdapterConfig.top_k={k} must be <= rank={cfg.rank} "
                     f"for kind={cfg.kind!r}")
  rate = default_bias_rate if cfg.bias_rate is None else cfg.bias_rate
  return {"top_k": k, "bias_rate": rate}


def init_selection(module: nnx.Module, cfg) -> None:
  """The attributes every top-k rank-wise adapter shares (FlyLoRA, SMoRA).

  Sets the delta scale, k and a zero balancing bias [R] whose `rate` is
  cfg.bias_rate. Draws no random numbers.
  """
  module.scale = cfg.scale
  module.top_k = cfg.top_k
  module.bias = variables.BalancingBias(jnp.zeros((cfg.rank,), jnp.float32),
                                        logical_axes=("rank",), rate=cfg.bias_rate)


def sign_rule(bias_r, counts_r, rate):
  """d_i + rate * sign(mean(c) - c_i) (per row of [..., R])."""
  step = rate * jnp.sign(jnp.mean(counts_r, axis=-1, keepdims=True) - counts_r)
  return (bias_r + step).astype(bias_r.dtype)


def update(adapter_state: nnx.State, stats: dict) -> nnx.State:
  """Returns `adapter_state` with the rule applied to every BalancingBias.

  Args:
    adapter_state: the adapter state (holds the biases).
    stats: {module path: entry} from `routing.pop`; a bias is stepped from
      the "counts" its own module sowed.
  """
  if not stats:
    return adapter_state
  flat = []
  for path, var in adapter_state.flat_state():
    entry = stats.get("/".join(map(str, path[:-1])), {})
    if isinstance(var, variables.BalancingBias) and "counts" in entry:
      var = var.replace(sign_rule(var.get_value(), entry["counts"], var.get_metadata("rate")))
    flat.append((path, var))
  return nnx.State.from_flat_path(flat)
