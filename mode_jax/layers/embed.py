"""Token embedding scaled by sqrt(d_model), tied to the output logits.

Legend: B batch, L length, D embed, V vocab.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax import sharding


class Embedder(nnx.Module):
  """`input_embedding [V, D]`, used for both input lookup and output logits."""

  def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.dim = dim
    self.input_embedding = nnx.Param(
        jax.random.normal(rngs.params(), (vocab_size, dim), param_dtype) * dim ** -0.5,
        logical_axes=("vocab", "embed"))

  def encode(self, tokens_bl: jax.Array, dtype) -> jax.Array:
    """Looks up token ids [B, L] -> [B, L, D] times sqrt(D) (in `dtype`)."""
    x_bld = jnp.take(self.input_embedding[...], tokens_bl, axis=0).astype(dtype)
    x_bld = x_bld * jnp.sqrt(jnp.asarray(self.dim, dtype))
    return sharding.constrain(x_bld, ("batch", "length", "embed"))

  def decode(self, x_bld: jax.Array) -> jax.Array:
    """Tied output projection [B, L, D] -> float32 logits [B, L, V]."""
    logits_blv = jnp.einsum("bld,vd->blv", x_bld,
                            self.input_embedding[...].astype(x_bld.dtype),
                            preferred_element_type=jnp.float32)
    return sharding.constrain(logits_blv, ("batch", "length", "vocab"))
