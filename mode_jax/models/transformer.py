"""The Gemma-family decoder-only transformer in Flax NNX.

Legend: B batch, L length, S key / cache length, D embed, V vocab.

Masking: causal by default; `segment_ids` restrict attention to the same
packed segment (0 = padding); `bidirectional_mask` marks a prefix (the
inputs of a prefix-LM) whose tokens attend to each other in both directions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import sharding
from mode_jax.layers import attention
from mode_jax.layers import embed
from mode_jax.layers import mlp
from mode_jax.layers import norms
from mode_jax.models import config as config_lib


class Block(nnx.Module):
  """Pre-norm attention and MLP with residuals (Gemma 2 adds post-norms)."""

  def __init__(self, cfg: config_lib.ModelConfig, layer: int, *, rngs: nnx.Rngs,
               adapter: adapters_lib.AdapterConfig | None):
    pdt = jnp.dtype(cfg.param_dtype)
    targets = adapter.targets if adapter is not None else ()
    d = cfg.embed_dim
    self.pre_attention_norm = norms.RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt)
    self.attn = attention.Attention(cfg, rngs=rngs, adapter=adapter, targets=targets,
                                    param_dtype=pdt,
                                    attention_type=cfg.layer_attention_type(layer),
                                    name=f"layers/{layer}/attn")
    self.pre_ffw_norm = norms.RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt)
    self.mlp = mlp.GatedMLP(d, cfg.mlp_dim, rngs=rngs, adapter=adapter, targets=targets,
                            param_dtype=pdt, name=f"layers/{layer}/mlp")
    if cfg.post_norms:
      self.post_attention_norm = norms.RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt)
      self.post_ffw_norm = norms.RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt)
    else:
      self.post_attention_norm = self.post_ffw_norm = None

  def __call__(self, x_bld, positions_bl, mask_bls, cache=None, cache_index=None):
    h, cache = self.attn(self.pre_attention_norm(x_bld), positions_bl, mask_bls,
                         cache, cache_index)
    if self.post_attention_norm is not None:
      h = self.post_attention_norm(h)
    x_bld = x_bld + h
    h = self.mlp(self.pre_ffw_norm(x_bld))
    if self.post_ffw_norm is not None:
      h = self.post_ffw_norm(h)
    x_bld = sharding.constrain(x_bld + h, ("batch", "length", "embed"))
    return x_bld, cache


def make_mask(length: int, segment_ids_bl=None, bidirectional_mask_bl=None,
              batch: int = 1) -> jax.Array:
  """Boolean attention mask [B, L, L] for a full (uncached) forward pass."""
  idx = jnp.arange(length)
  mask_bls = jnp.broadcast_to(idx[None, :, None] >= idx[None, None, :], (batch, length, length))
  if bidirectional_mask_bl is not None:
    pre = bidirectional_mask_bl.astype(bool)
    mask_bls = mask_bls | (pre[:, :, None] & pre[:, None, :])
  if segment_ids_bl is not None:
    seg = segment_ids_bl
    mask_bls = mask_bls & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
  return mask_bls


class Transformer(nnx.Module):
  """Decoder with tied embeddings: `embedder`, `layers` (nnx.List), `final_norm`."""

  def __init__(self, cfg: config_lib.ModelConfig,
               adapter: adapters_lib.AdapterConfig | None = None, *, rngs: nnx.Rngs):
    self.config = cfg
    self.adapter_config = adapter
    self.embedder = embed.Embedder(cfg.vocab_size, cfg.embed_dim, rngs=rngs,
                                   param_dtype=jnp.dtype(cfg.param_dtype))
    self.layers = nnx.List([Block(cfg, i, rngs=rngs, adapter=adapter)
                            for i in range(cfg.num_layers)])
    self.final_norm = norms.RMSNorm(cfg.embed_dim, eps=cfg.norm_eps,
                                    param_dtype=jnp.dtype(cfg.param_dtype))

  def _logits(self, x_bld):
    return self.project(self.final_norm(x_bld))

  def project(self, h_bld):
    """Final hidden states (after `final_norm`) [B, L, D] -> float32 logits [B, L, V]."""
    logits_blv = self.embedder.decode(h_bld)
    cap = self.config.final_logit_softcap
    if cap is not None:
      logits_blv = jnp.tanh(logits_blv / cap) * cap
    return logits_blv

  def __call__(self, tokens_bl: jax.Array, positions_bl: jax.Array | None = None,
               segment_ids_bl: jax.Array | None = None,
               bidirectional_mask_bl: jax.Array | None = None,
               return_hidden: bool = False) -> jax.Array:
    """Full forward pass: int32 tokens [B, L] -> float32 logits [B, L, V].

    With `return_hidden`, the final hidden states [B, L, D] (after the final
    norm) instead: `project` maps them to logits, chunk by chunk in
    `losses.chunked_cross_entropy`.
    """
    b, l = tokens_bl.shape
    if positions_bl is None:
      positions_bl = jnp.broadcast_to(jnp.arange(l), (b, l))
    mask_bls = make_mask(l, segment_ids_bl, bidirectional_mask_bl, batch=b)
    x_bld = self.embedder.encode(tokens_bl, jnp.dtype(self.config.dtype))
    for layer in self.layers:
      x_bld, _ = layer(x_bld, positions_bl, mask_bls)
    if return_hidden:
      return self.final_norm(x_bld)
    return self._logits(x_bld)

  def init_cache(self, batch: int, max_length: int, dtype=None) -> dict:
    """An empty KV cache: {"index", "key_mask" [B, S], "layers": [{"k", "v"}]}."""
    cfg = self.config
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_length, cfg.num_kv_heads, cfg.head_dim)
    return {
        "index": jnp.zeros((), jnp.int32),
        "key_mask": jnp.zeros((batch, max_length), bool),
        "layers": [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                   for _ in range(cfg.num_layers)],
    }

  def decode(self, tokens_bl: jax.Array, cache: dict, positions_bl: jax.Array | None = None,
             input_mask_bl: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Incremental forward pass that reads and extends the KV cache.

    Writes the L new tokens at cache slots [index, index + L). Prefill with
    a (left-padded) prompt, then call with L = 1 per generated token.

    Args:
      tokens_bl: new tokens [B, L].
      cache: from `init_cache` or a previous call.
      positions_bl: their rotary positions (default: slot indices).
      input_mask_bl: False for padding tokens, which no query attends to.

    Returns:
      (float32 logits [B, L, V], updated cache).
    """
    b, l = tokens_bl.shape
    index = cache["index"]
    slots = index + jnp.arange(l)
    if positions_bl is None:
      positions_bl = jnp.broadcast_to(slots, (b, l))
    if input_mask_bl is None:
      input_mask_bl = jnp.ones((b, l), bool)
    key_mask_bs = jax.lax.dynamic_update_slice(
        cache["key_mask"], input_mask_bl.astype(bool), (jnp.zeros((), jnp.int32), index))
    s = key_mask_bs.shape[1]
    causal_ls = slots[:, None] >= jnp.arange(s)[None, :]
    mask_bls = causal_ls[None] & key_mask_bs[:, None, :]
    x_bld = self.embedder.encode(tokens_bl, jnp.dtype(self.config.dtype))
    new_layers = []
    for layer, layer_cache in zip(self.layers, cache["layers"]):
      x_bld, layer_cache = layer(x_bld, positions_bl, mask_bls, layer_cache, index)
      new_layers.append(layer_cache)
    cache = {"index": index + l, "key_mask": key_mask_bs, "layers": new_layers}
    return self._logits(x_bld), cache
