"""Gated-GELU feed-forward block: down(gelu(gate(x)) * up(x)).

Legend: B batch, L length, D embed, F mlp hidden.
"""

import jax
from flax import nnx

from mode_jax import sharding
from mode_jax.layers import linear


class GatedMLP(nnx.Module):
  """Projections `gate`, `up` [D, F] and `down` [F, D], each adaptable."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, adapter=None,
               targets=(), param_dtype=None):
    def proj(name, i, o, ia, oa):
      return linear.Projection((i,), (o,), (ia,), (oa,), rngs=rngs, param_dtype=param_dtype,
                               adapter=adapter if name in targets else None)
    self.gate = proj("gate", dim, hidden, "embed", "mlp")
    self.up = proj("up", dim, hidden, "embed", "mlp")
    self.down = proj("down", hidden, dim, "mlp", "embed")

  def __call__(self, x_bld: jax.Array) -> jax.Array:
    h_blf = jax.nn.gelu(self.gate(x_bld), approximate=True) * self.up(x_bld)
    h_blf = sharding.constrain(h_blf, ("batch", "length", "mlp"))
    return self.down(h_blf)
