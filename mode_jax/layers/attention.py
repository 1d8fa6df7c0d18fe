"""Multi-query / grouped-query attention with rotary positions and a KV cache.

Legend: B batch, L query length, S key length, D embed, H query heads,
N key/value heads, G = H / N query heads per kv head, K head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax import sharding
from mode_jax.layers import linear
from mode_jax.layers import rope

# Gemma's masking constant: large and finite, so a fully masked row gives a
# uniform (not NaN) softmax.
_MASK_VALUE = -2.3819763e38


class Attention(nnx.Module):
  """Projections `q` [D,H,K], `k`, `v` [D,N,K] and `o` [H,K,D], each adaptable."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, adapter=None, targets=(), param_dtype=None,
               attention_type: str = "global"):
    d, h, n, k = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.num_heads, self.num_kv_heads, self.head_dim = h, n, k
    self.rope_base = cfg.rope_base
    self.query_scale = (cfg.query_pre_attn_scalar or k) ** -0.5
    self.softcap = cfg.attn_logit_softcap
    self.window = cfg.sliding_window if attention_type == "local" else None

    def proj(name, i, o, ia, oa):
      return linear.Projection(i, o, ia, oa, rngs=rngs, param_dtype=param_dtype,
                               adapter=adapter if name in targets else None)
    self.q = proj("q", (d,), (h, k), ("embed",), ("heads", "kv"))
    self.k = proj("k", (d,), (n, k), ("embed",), ("kv_heads", "kv"))
    self.v = proj("v", (d,), (n, k), ("embed",), ("kv_heads", "kv"))
    self.o = proj("o", (h, k), (d,), ("heads", "kv"), ("embed",))

  def __call__(self, x_bld: jax.Array, positions_bl: jax.Array, mask_bls: jax.Array,
               cache: dict | None = None, cache_index: jax.Array | None = None,
               window: jax.Array | None = None):
    """Attends and returns (y [B, L, D], updated cache or None).

    Args:
      x_bld: inputs.
      positions_bl: rotary positions of the queries (and new keys).
      mask_bls: boolean mask, True where query l may attend key s. With a
        cache, S is the cache length; the sliding window (local layers) is
        applied here from slot distances.
      cache: {"k", "v": [B, S, N, K]} or None.
      cache_index: first slot written by this call (with a cache).
      window: a per-call sliding window (an int32 scalar, possibly traced:
        scanned layers pass theirs as data; a global layer passes the int32
        maximum); None uses the layer's own (`attention_type`).
    """
    q_blhk = rope.apply_rope(self.q(x_bld), positions_bl, self.rope_base)
    k_blnk = rope.apply_rope(self.k(x_bld), positions_bl, self.rope_base)
    v_blnk = self.v(x_bld)
    q_blhk = sharding.constrain(q_blhk * self.query_scale, ("batch", "length", "heads", "kv"))

    if cache is not None:
      zero = jnp.zeros((), jnp.int32)
      idx = (zero, cache_index.astype(jnp.int32), zero, zero)
      k_bsnk = jax.lax.dynamic_update_slice(cache["k"], k_blnk.astype(cache["k"].dtype), idx)
      v_bsnk = jax.lax.dynamic_update_slice(cache["v"], v_blnk.astype(cache["v"].dtype), idx)
      cache = {"k": k_bsnk, "v": v_bsnk}
      q_slot = cache_index + jnp.arange(x_bld.shape[1])
    else:
      k_bsnk, v_bsnk = k_blnk, v_blnk
      q_slot = jnp.arange(x_bld.shape[1])

    window = self.window if window is None else window
    if window is not None:
      k_slot = jnp.arange(k_bsnk.shape[1])
      mask_bls = mask_bls & ((q_slot[:, None] - k_slot[None, :]) < window)[None]

    b, l, h, k = q_blhk.shape
    n = self.num_kv_heads
    q_blngk = q_blhk.reshape(b, l, n, h // n, k)
    logits = jnp.einsum("blngk,bsnk->bngls", q_blngk, k_bsnk.astype(q_blhk.dtype),
                        preferred_element_type=jnp.float32)
    if self.softcap is not None:
      logits = jnp.tanh(logits / self.softcap) * self.softcap
    logits = jnp.where(mask_bls[:, None, None, :, :], logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(x_bld.dtype)
    out_blngk = jnp.einsum("bngls,bsnk->blngk", probs, v_bsnk.astype(x_bld.dtype))
    out_blhk = sharding.constrain(out_blngk.reshape(b, l, h, k),
                                  ("batch", "length", "heads", "kv"))
    return self.o(out_blhk), cache
