"""A frozen base projection with an optional adapter beside it.

The base kernel is an `nnx.Param` at `<name>/kernel` whether or not an
adapter is attached, so base-only checkpoints restore into adapted models.
The adapter (at `<name>/adapter/...`) sees the flattened input [..., P] and
returns a delta [..., Q] that is reshaped to the output shape and added.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax import adapters as adapters_lib


class Projection(nnx.Module):
  """y = x . kernel (+ adapter delta), contracting the trailing input dims.

  Args:
    in_shape: trailing input dims contracted (e.g. (D,) or (H, K)).
    out_shape: output dims (e.g. (H, K) or (D,)).
    in_axes / out_axes: logical names of those dims.
    adapter: an AdapterConfig, or None for no adapter.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
               in_axes: Sequence[str | None], out_axes: Sequence[str | None], *,
               rngs: nnx.Rngs, adapter: adapters_lib.AdapterConfig | None = None,
               param_dtype=jnp.float32):
    self.in_shape = tuple(in_shape)
    self.out_shape = tuple(out_shape)
    fan_in = math.prod(self.in_shape)
    self.kernel = nnx.Param(
        jax.random.normal(rngs.params(), self.in_shape + self.out_shape, param_dtype)
        * fan_in ** -0.5,
        logical_axes=tuple(in_axes) + tuple(out_axes))
    if adapter is None:
      self.adapter = None
    else:
      self.adapter = adapters_lib.make_adapter(
          adapter, fan_in, math.prod(self.out_shape), rngs,
          in_axis=in_axes[0], out_axis=out_axes[0])

  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_shape)
    y = jnp.tensordot(x, self.kernel[...].astype(x.dtype), axes=n_in)
    if self.adapter is not None:
      lead = x.shape[:x.ndim - n_in]
      dy = self.adapter(x.reshape(*lead, -1))
      y = y + dy.reshape(*lead, *self.out_shape).astype(y.dtype)
    return y
