"""Token-level losses.

Legend: B batch, L length, C chunk length, N chunks, D embed, V vocab.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def cross_entropy(logits_blv: jax.Array, targets_bl: jax.Array,
                  weights_bl: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Weighted mean next-token cross-entropy, computed in float32.

  Returns:
    (mean loss over weighted tokens, sum of weights).
  """
  logp_blv = jax.nn.log_softmax(logits_blv.astype(jnp.float32), axis=-1)
  nll_bl = -jnp.take_along_axis(logp_blv, targets_bl[..., None], axis=-1)[..., 0]
  if weights_bl is None:
    weights_bl = jnp.ones_like(nll_bl)
  weights_bl = weights_bl.astype(jnp.float32)
  total = jnp.sum(weights_bl)
  return jnp.sum(nll_bl * weights_bl) / jnp.maximum(total, 1.0), total


def chunked_cross_entropy(hidden_bld: jax.Array, project: Callable[[jax.Array], jax.Array],
                          targets_bl: jax.Array, weights_bl: jax.Array | None = None,
                          chunk: int = 256) -> tuple[jax.Array, jax.Array]:
  """`cross_entropy(project(hidden_bld), ...)` without the whole [B, L, V] logits.

  The sequence is cut into chunks of `chunk` positions (padded with
  zero-weight positions to a multiple); a scan projects one chunk to its
  float32 logits, takes its summed loss and drops the logits. The chunk body
  is rematerialised, so the backward pass also holds one chunk's logits and
  their gradient at a time: [B, C, V] instead of [B, L, V] (with Gemma's
  256,128-piece vocabulary and L = 1024, a quarter GiB per row at C = 256
  instead of 1 GiB, twice over for the gradient).

  Args:
    hidden_bld: final hidden states [B, L, D] (after the final norm).
    project: hidden [B, C, D] -> logits [B, C, V] (the tied output layer).
    targets_bl: int targets [B, L].
    weights_bl: loss weights [B, L] (default: ones).
    chunk: positions per chunk; 0 or >= L computes the logits at once.

  Returns:
    (mean loss over weighted tokens, sum of weights), as `cross_entropy`.
  """
  b, l = targets_bl.shape
  if weights_bl is None:
    weights_bl = jnp.ones((b, l), jnp.float32)
  if chunk <= 0 or chunk >= l:
    return cross_entropy(project(hidden_bld), targets_bl, weights_bl)
  weights_bl = weights_bl.astype(jnp.float32)
  n = -(-l // chunk)
  pad = n * chunk - l
  if pad:
    hidden_bld = jnp.pad(hidden_bld, ((0, 0), (0, pad), (0, 0)))
    targets_bl = jnp.pad(targets_bl, ((0, 0), (0, pad)))
    weights_bl = jnp.pad(weights_bl, ((0, 0), (0, pad)))

  def to_chunks(x):  # [B, N*C, ...] -> [N, B, C, ...]
    return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)

  @jax.checkpoint
  def chunk_loss(h_bcd, t_bc, w_bc):
    logits_bcv = project(h_bcd).astype(jnp.float32)
    lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
    target_bc = jnp.take_along_axis(logits_bcv, t_bc[..., None], axis=-1)[..., 0]
    return jnp.sum((lse_bc - target_bc) * w_bc)

  def body(acc, xs):
    return acc + chunk_loss(*xs), None

  nll, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                        (to_chunks(hidden_bld), to_chunks(targets_bl), to_chunks(weights_bl)))
  total = jnp.sum(weights_bl)
  return nll / jnp.maximum(total, 1.0), total
