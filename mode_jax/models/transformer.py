"""The Gemma-family decoder-only transformer in Flax NNX.

Legend: B batch, L length, S key / cache length, D embed, V vocab.

Masking: causal by default; `segment_ids` restrict attention to the same
packed segment (0 = padding); `bidirectional_mask` marks a prefix (the
inputs of a prefix-LM) whose tokens attend to each other in both directions.

Layers run as a Python loop over `layers/<i>` or, with
`ModelConfig.scan_layers`, as one `jax.lax.scan` over a block whose
variables are stacked along a leading `layers` axis (models/stacking.py);
Gemma 2's local/global alternation is then scanned data (each layer's
window). Each block call is a pure function of its split state, optionally
under `jax.checkpoint` with `ModelConfig.remat_policy`; what its modules
sow (routing statistics) is popped inside and returned, so it survives the
scan and the rematerialisation and is put back on the model, stacked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import errors as flax_errors
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import sharding
from mode_jax.adapters import routing
from mode_jax.layers import attention
from mode_jax.layers import embed
from mode_jax.layers import mlp
from mode_jax.layers import norms
from mode_jax.models import config as config_lib
from mode_jax.models import stacking

# A window no query-key distance reaches: global layers in a scanned stack.
_NO_WINDOW = jnp.iinfo(jnp.int32).max

REMAT = {"full": jax.checkpoint_policies.nothing_saveable,
         "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
         "save_all_dots": jax.checkpoint_policies.checkpoint_dots}


class Block(nnx.Module):
  """Pre-norm attention and MLP with residuals (Gemma 2 adds post-norms)."""

  def __init__(self, cfg: config_lib.ModelConfig, attention_type: str, *, rngs: nnx.Rngs,
               adapter: adapters_lib.AdapterConfig | None):
    pdt = jnp.dtype(cfg.param_dtype)
    targets = adapter.targets if adapter is not None else ()
    d = cfg.embed_dim
    self.pre_attention_norm = norms.RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt)
    self.attn = attention.Attention(cfg, rngs=rngs, adapter=adapter, targets=targets,
                                    param_dtype=pdt, attention_type=attention_type)
    self.pre_ffw_norm = norms.RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt)
    self.mlp = mlp.GatedMLP(d, cfg.mlp_dim, rngs=rngs, adapter=adapter, targets=targets,
                            param_dtype=pdt)
    if cfg.post_norms:
      self.post_attention_norm = norms.RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt)
      self.post_ffw_norm = norms.RMSNorm(d, eps=cfg.norm_eps, param_dtype=pdt)
    else:
      self.post_attention_norm = self.post_ffw_norm = None

  def __call__(self, x_bld, positions_bl, mask_bls, cache=None, cache_index=None,
               window=None):
    h, cache = self.attn(self.pre_attention_norm(x_bld), positions_bl, mask_bls,
                         cache, cache_index, window)
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


def _block_fn(graphdef, remat_policy: str):
  """(block state, x, per-layer inputs) -> (x, cache, routing stats): pure.

  The block is merged from its state, called, and its sown statistics are
  popped and returned, so the function can run under `jax.checkpoint` and
  as a `jax.lax.scan` body.
  """

  def fn(state, x_bld, positions_bl, mask_bls, cache, cache_index, window):
    block = nnx.merge(graphdef, state)
    x_bld, cache = block(x_bld, positions_bl, mask_bls, cache, cache_index, window)
    return x_bld, cache, nnx.pop(block, routing.RoutingStats)

  if remat_policy == "none":
    return fn
  return jax.checkpoint(fn, policy=REMAT[remat_policy])


def _put_stats(module: nnx.Module, stats: nnx.State) -> None:
  """Puts a block's popped statistics back on `module` (for `routing.pop`).

  Inside a trace nested in the module's own (the body of a decode loop
  around a model merged outside it) they are dropped: the outer module
  cannot hold this trace's values, and nothing outside could read them.
  """
  try:
    routing.put(module, stats)
  except flax_errors.TraceContextError:
    pass


class Transformer(nnx.Module):
  """Decoder with tied embeddings: `embedder`, `layers`, `final_norm`.

  `layers` is an nnx.List of blocks, or one block with stacked variables
  when `cfg.scan_layers`.
  """

  def __init__(self, cfg: config_lib.ModelConfig,
               adapter: adapters_lib.AdapterConfig | None = None, *, rngs: nnx.Rngs):
    self.config = cfg
    self.adapter_config = adapter
    self.embedder = embed.Embedder(cfg.vocab_size, cfg.embed_dim, rngs=rngs,
                                   param_dtype=jnp.dtype(cfg.param_dtype))
    # Scanned blocks are built exactly as looped ones (same random draws),
    # then stacked: block i of the loop is slice i of the stack.
    blocks = [Block(cfg, None if cfg.scan_layers else cfg.layer_attention_type(i), rngs=rngs,
                    adapter=adapter) for i in range(cfg.num_layers)]
    if cfg.scan_layers:
      graphdef = nnx.graphdef(blocks[0])
      self.layers = nnx.merge(graphdef, stacking.stack_variables(
          [nnx.state(b) for b in blocks]))
    else:
      self.layers = nnx.List(blocks)
    self.final_norm = norms.RMSNorm(cfg.embed_dim, eps=cfg.norm_eps,
                                    param_dtype=jnp.dtype(cfg.param_dtype))

  def _windows(self):
    """Per-layer sliding windows [num_layers] (int32), or None without local layers."""
    cfg = self.config
    types = [cfg.layer_attention_type(i) for i in range(cfg.num_layers)]
    if "local" not in types:
      return None
    return jnp.asarray([cfg.sliding_window if t == "local" else _NO_WINDOW for t in types],
                       jnp.int32)

  def _run_layers(self, x_bld, positions_bl, mask_bls, caches=None, cache_index=None):
    """All blocks; returns (x, new caches). Routing statistics go back on the layers."""
    cfg = self.config
    if not cfg.scan_layers:
      new_caches = []
      for i, layer in enumerate(self.layers):
        graphdef, state = nnx.split(layer)
        fn = _block_fn(graphdef, cfg.remat_policy)
        cache = None if caches is None else caches[i]
        x_bld, cache, stats = fn(state, x_bld, positions_bl, mask_bls, cache, cache_index, None)
        _put_stats(layer, stats)
        new_caches.append(cache)
      return x_bld, (None if caches is None else new_caches)
    graphdef, state = nnx.split(self.layers)
    fn = _block_fn(graphdef, cfg.remat_policy)

    def body(x, xs):
      layer_state, cache, window = xs
      x, cache, stats = fn(layer_state, x, positions_bl, mask_bls, cache, cache_index, window)
      return x, (cache, stats)

    x_bld, (caches, stats) = jax.lax.scan(body, x_bld, (state, caches, self._windows()))
    _put_stats(self.layers, stats)
    return x_bld, caches

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
    x_bld, _ = self._run_layers(x_bld, positions_bl, mask_bls)
    if return_hidden:
      return self.final_norm(x_bld)
    return self._logits(x_bld)

  def init_cache(self, batch: int, max_length: int, dtype=None) -> dict:
    """An empty KV cache: {"index", "key_mask" [B, S], "layers"}.

    "layers" is a list of {"k", "v": [B, S, N, K]} per layer, or with
    scanned layers one {"k", "v": [num_layers, B, S, N, K]}.
    """
    cfg = self.config
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, max_length, cfg.num_kv_heads, cfg.head_dim)
    if cfg.scan_layers:
      layers = {"k": jnp.zeros((cfg.num_layers,) + shape, dtype),
                "v": jnp.zeros((cfg.num_layers,) + shape, dtype)}
    else:
      layers = [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                for _ in range(cfg.num_layers)]
    return {"index": jnp.zeros((), jnp.int32),
            "key_mask": jnp.zeros((batch, max_length), bool), "layers": layers}

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
    x_bld, new_layers = self._run_layers(x_bld, positions_bl, mask_bls, cache["layers"], index)
    cache = {"index": index + l, "key_mask": key_mask_bs, "layers": new_layers}
    return self._logits(x_bld), cache
