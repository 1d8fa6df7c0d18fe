"""Batched greedy decoding with the KV cache, jitted once per shape.

Prompts are left-padded to a fixed length, so every batch of an evaluation
reuses one compiled program; rotary positions count only real tokens.

Legend: B batch, P prompt length, T decode length.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
  """(tokens [B, P], mask [B, P]) with each prompt's last `length` ids right-aligned."""
  toks = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    p = list(p)[-length:]
    if p:
      toks[i, length - len(p):] = p
      mask[i, length - len(p):] = True
  return toks, mask


def greedy(model: nnx.Module, tokens_bp: jax.Array, mask_bp: jax.Array, max_decode_len: int,
           eos_id: int, pad_id: int = 0) -> jax.Array:
  """Greedy continuation of left-padded prompts, stopping at EOS.

  Returns:
    int32 [B, max_decode_len]: generated ids, EOS included, `pad_id` after.
  """
  b, p = tokens_bp.shape
  cache = model.init_cache(b, p + max_decode_len)
  positions_bp = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
  logits, cache = model.decode(tokens_bp, cache, positions_bp, mask_bp)
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
  next_pos = jnp.sum(mask_bp, axis=1).astype(jnp.int32)
  out_bt = jnp.full((b, max_decode_len), pad_id, jnp.int32)

  def cond(carry):
    i, _, done, _, _ = carry
    return (i < max_decode_len) & ~jnp.all(done)

  def body(carry):
    i, tok_b, done, out_bt, cache = carry
    out_bt = out_bt.at[:, i].set(jnp.where(done, pad_id, tok_b))
    done = done | (tok_b == eos_id)
    logits, cache = model.decode(tok_b[:, None], cache, (next_pos + i)[:, None])
    nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    return i + 1, nxt, done, out_bt, cache

  init = (jnp.zeros((), jnp.int32), first, jnp.zeros((b,), bool), out_bt, cache)
  _, _, _, out_bt, _ = jax.lax.while_loop(cond, body, init)
  return out_bt


def make_decode_fn(graphdef, max_decode_len: int, eos_id: int, pad_id: int = 0):
  """jit(states, tokens, mask) -> ids; `nnx.merge(graphdef, *states)` inside the trace."""

  @jax.jit
  def decode(states, tokens_bp, mask_bp):
    model = nnx.merge(graphdef, *states)
    return greedy(model, tokens_bp, mask_bp, max_decode_len, eos_id, pad_id)

  return decode


def strip(ids: Sequence[int], eos_id: int, pad_id: int = 0) -> list[int]:
  """Ids up to (not including) the first EOS, without padding."""
  out = []
  for t in ids:
    t = int(t)
    if t == eos_id:
      break
    if t != pad_id:
      out.append(t)
  return out
