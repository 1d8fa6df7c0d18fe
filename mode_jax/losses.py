"""Token-level losses.

Legend: B batch, L length, V vocab.
"""

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
