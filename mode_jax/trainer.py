"""The train state and the jitted train step.

The train state is a plain pytree (T5X style): step, the trainable adapter
parameters, the optimizer state over exactly those, and the non-trained
adapter state (balancing biases). The frozen base is an argument of the
step, never part of the state, so it gets no gradient, no optimizer slot and
is never written to a run checkpoint.

Legend: A micro-batches, B batch, L length.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import losses
from mode_jax import sharding
from mode_jax.adapters import balancing
from mode_jax.adapters import routing

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
# The micro-batch loop re-gathers the frozen base in each iteration (see
# `train_step`). Private switch, for measuring what that saves only
# (benchmarks/aot_gather_barrier.py); read when the step is built.
_GATHER_BASE_PER_MICRO_BATCH = True
OPTIONAL_KEYS = ("decoder_positions", "decoder_segment_ids", "decoder_causal_attention")


def split_model(model: nnx.Module, trainable=adapters_lib.TRAINABLE):
  """(graphdef, trainable params, adapter state, frozen rest) of a model.

  `trainable` is the adapter type by default; the quickstart's base stage
  passes `nnx.Param` to train a base model in full.
  """
  graphdef, params, adapter_state, frozen = nnx.split(
      model, trainable, adapters_lib.AdapterState, ...)
  return graphdef, params, adapter_state, frozen


def init_state(params: nnx.State, adapter_state: nnx.State,
               tx: optax.GradientTransformation) -> dict:
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": tx.init(params), "adapter_state": adapter_state}


def model_inputs(batch: dict, prefix_lm: bool = False) -> dict:
  """Model call kwargs from a feature-converted batch."""
  kw = {"positions_bl": batch.get("decoder_positions"),
        "segment_ids_bl": batch.get("decoder_segment_ids")}
  if prefix_lm and "decoder_causal_attention" in batch:
    kw["bidirectional_mask_bl"] = batch["decoder_causal_attention"]
  return kw


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: Callable,
                    *, micro_batches: int = 1, prefix_lm: bool = False,
                    loss_chunk: int = 0) -> Callable:
  """Returns train_step(state, frozen, batch) -> (state, metrics); not yet jitted.

  Gradient accumulation splits the batch into `micro_batches` along B and
  scans over them; the sum of per-token losses is divided by the token count
  of the whole batch, so the result equals the full-batch gradient. A step
  whose loss or gradient is not finite leaves the state unchanged and
  reports `finite = False`.

  Adapters may sow a load-balancing loss (`routing.sow`: "aux_loss" with
  its "aux_weight", e.g. MoDE top-k), popped after the forward pass: the optimised loss is
  cross-entropy + sum of aux_weight * aux_loss (each micro-batch adds 1/A of
  its own). `loss` reports the cross-entropy alone and `aux_loss` the
  weighted term (0 when none is recorded). Balancing biases (FlyLoRA, SMoRA)
  are updated after the optimizer step by `balancing.update` from the
  selection counts, summed over micro-batches.

  `loss_chunk` > 0 computes the output projection and cross-entropy
  `loss_chunk` positions at a time (`losses.chunked_cross_entropy`), so the
  [B, L, V] logits and their gradient are never whole in memory.
  """

  def loss_fn(params, adapter_state, frozen, mb, total_tokens):
    model = nnx.merge(graphdef, params, adapter_state, frozen)
    hidden = model(mb["decoder_input_tokens"], **model_inputs(mb, prefix_lm),
                   return_hidden=True)
    stats = routing.pop(model)  # what the adapters sowed: {module path: entry}
    mean, ntok = losses.chunked_cross_entropy(hidden, model.project, mb["decoder_target_tokens"],
                                              mb["decoder_loss_weights"], loss_chunk)
    ce = mean * ntok / total_tokens
    aux = routing.aux_loss(stats) / micro_batches
    return ce + aux, (stats, ce, aux)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  barrier = _GATHER_BASE_PER_MICRO_BATCH

  def train_step(state, frozen, batch):
    total = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
    params, astate = state["params"], state["adapter_state"]
    if micro_batches == 1:
      (_, (stats, loss, aux)), grads = grad_fn(params, astate, frozen, batch, total)
    else:
      # Micro-batch a takes rows a, a + A, a + 2A, ...: each device's rows
      # split evenly over the micro-batches, so every micro-batch stays
      # sharded over all data-parallel devices without moving a row.
      mbs = jax.tree.map(
          lambda x: sharding.constrain(
              x.reshape(x.shape[0] // micro_batches, micro_batches, *x.shape[1:]).swapaxes(0, 1),
              (None, "batch", "length")), batch)

      def body(carry, mb):
        # The barrier ties the frozen base to this iteration's micro-batch, so
        # XLA cannot hoist the base's FSDP all-gathers out of the loop, which
        # would hold every gathered base weight for the whole step.
        frozen_i, mb = jax.lax.optimization_barrier((frozen, mb)) if barrier else (frozen, mb)
        (_, (s, l, a)), g = grad_fn(params, astate, frozen_i, mb, total)
        acc_l, acc_a, acc_g = carry
        return (acc_l + l, acc_a + a, jax.tree.map(jnp.add, acc_g, g)), s

      zeros = jax.tree.map(jnp.zeros_like, params)
      (loss, aux, grads), stats = jax.lax.scan(
          body, (jnp.zeros(()), jnp.zeros(()), zeros), mbs)
      # Selection counts add up over the batch (exact in float32, so the
      # sign rule sees exact ties); everything else is a per-batch mean.
      stats = jax.tree_util.tree_map_with_path(
          lambda path, x: x.sum(0) if path[-1].key == "counts" else x.mean(0), stats)
    gnorm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
           "opt_state": opt_state,
           "adapter_state": balancing.update(astate, stats)}
    finite = jnp.isfinite(loss) & jnp.isfinite(aux) & jnp.isfinite(gnorm)
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {"loss": loss, "aux_loss": aux, "grad_norm": gnorm,
               "learning_rate": schedule(state["step"]),
               "target_tokens": total,
               "tokens": jnp.sum(batch["decoder_target_tokens"] != 0).astype(jnp.float32),
               "finite": finite,
               "routing": routing.summarize(stats)}
    return new, metrics

  return train_step


def data_shard(mesh, global_batch: int, rules=sharding.DEFAULT_RULES) -> tuple[int, int]:
  """(shard index, number of shards) of this process's rows of a global batch.

  The rows a process's devices hold under the ('batch',) sharding form one
  contiguous block; the process reads data shard `index` of `count` (equal
  to (process_index, process_count) when the batch axes span the processes
  in order, as with the default mesh). Processes that hold the same rows
  (a mesh axis that replicates the batch across hosts) read the same shard.

  Raises:
    ValueError: the process's rows are not one contiguous block.
  """
  sh = sharding.named_sharding(("batch",), (global_batch,), mesh, rules)
  rows = sorted({r for idx in sh.addressable_devices_indices_map((global_batch,)).values()
                 for r in range(*idx[0].indices(global_batch))})
  lo, n = rows[0], len(rows)
  if rows != list(range(lo, lo + n)) or global_batch % n or lo % n:
    raise ValueError(f"process {jax.process_index()} holds rows {rows[:4]}... of a batch of "
                     f"{global_batch}: not one block of a split into equal shards; order the "
                     "mesh's devices by process along its batch axes")
  return lo // n, global_batch // n


def place_batch(batch: dict, mesh, rules=sharding.DEFAULT_RULES,
                num_shards: int | None = None) -> dict:
  """Per-host numpy batch -> global arrays sharded on ('batch', 'length').

  Each process passes its own rows (shard `data_shard(...)[0]` of
  `num_shards`, default the process count); loss weights become float32.
  """
  out = {}
  n = jax.process_count() if num_shards is None else num_shards
  for k in BATCH_KEYS + OPTIONAL_KEYS:
    if k in batch:
      x = np.asarray(batch[k], np.float32 if k == "decoder_loss_weights" else None)
      sh = sharding.named_sharding(("batch", "length"), (x.shape[0] * n, x.shape[1]),
                                   mesh, rules)
      out[k] = jax.make_array_from_process_local_data(sh, x)
  return out


def batch_shardings(batch_shapes: dict, mesh, rules=sharding.DEFAULT_RULES) -> dict:
  return {k: sharding.named_sharding(("batch", "length"), v.shape, mesh, rules)
          for k, v in batch_shapes.items()}


def jit_train_step(train_step, state, frozen, batch_example, mesh,
                   rules=sharding.DEFAULT_RULES):
  """jit with shardings by logical axes and the train state donated."""
  state_sh = sharding.state_shardings(state, mesh, rules)
  frozen_sh = sharding.state_shardings(frozen, mesh, rules)
  batch_sh = batch_shardings(batch_example, mesh, rules)
  return jax.jit(train_step, in_shardings=(state_sh, frozen_sh, batch_sh),
                 out_shardings=(state_sh, None), donate_argnums=(0,))
