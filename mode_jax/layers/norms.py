"""RMSNorm with Gemma's (1 + scale) parameterisation, computed in float32.

Legend: D embed.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * (1 + scale); `scale [D]` starts at 0."""

  def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = nnx.Param(jnp.zeros((dim,), param_dtype), logical_axes=("embed",))

  def __call__(self, x_bld: jax.Array) -> jax.Array:
    x32 = x_bld.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps)
    return (y * (1.0 + self.scale[...].astype(jnp.float32))).astype(x_bld.dtype)
