"""Rotary position embedding, Gemma's half-split (not interleaved) form.

Legend: B batch, L length, H heads, K head dim.
"""

import jax
import jax.numpy as jnp


def apply_rope(x_blhk: jax.Array, positions_bl: jax.Array, base: float) -> jax.Array:
  """Rotates the two halves of the head dimension by position-dependent angles."""
  k = x_blhk.shape[-1]
  fraction = 2.0 * jnp.arange(k // 2, dtype=jnp.float32) / k
  timescale = base ** fraction
  angle_bl1k = (positions_bl.astype(jnp.float32)[:, :, None, None] / timescale)
  sin, cos = jnp.sin(angle_bl1k), jnp.cos(angle_bl1k)
  x1, x2 = jnp.split(x_blhk.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_blhk.dtype)
