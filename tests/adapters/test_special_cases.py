"""METHODS.md special cases of MoDE, with identical arrays.

E = 1 gives LoRA (the softmax is 1); p = R (G = 1) gives MoLoRA-SD with
`router[:, 0, :]` as its router.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters

P, Q = 12, 10


def _zero_init(kind, **kw):
  cfg = adapters.AdapterConfig(kind=kind, a_init_scale=0.0, router_init_scale=0.0, **kw)
  return adapters.make_adapter(cfg, P, Q, nnx.Rngs(0))


def _fill(variable, rng, std):
  variable[...] = jnp.asarray(std * rng.normal(size=variable.shape), jnp.float32)


@pytest.mark.parametrize("r,p,alpha", [(4, 1, None), (4, 2, 2.0), (6, 6, 9.0)])
def test_mode_with_one_expert_is_lora(r, p, alpha):
  mode = _zero_init("mode", rank=r, num_experts=1, expert_rank=p, alpha=alpha)
  lora = _zero_init("lora", rank=r, alpha=alpha)
  rng = np.random.default_rng(r + p)
  for name, std in (("lora_a", 0.3), ("lora_b", 0.5), ("router", 1.0)):
    _fill(getattr(mode, name), rng, std)
  assert mode.lora_b.shape == (1, r, Q)
  lora.lora_a[...] = mode.lora_a[...]
  lora.lora_b[...] = mode.lora_b[...][0]
  x_blp = jnp.asarray(rng.normal(size=(2, 5, P)), jnp.float32)
  want = np.asarray(lora(x_blp))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(mode(x_blp)), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("r,e,alpha", [(4, 3, None), (8, 5, 4.0)])
def test_mode_with_one_group_is_molora_sd(r, e, alpha):
  mode = _zero_init("mode", rank=r, num_experts=e, expert_rank=r, alpha=alpha)
  sd = _zero_init("molora_sd", rank=r, num_experts=e, alpha=alpha)
  rng = np.random.default_rng(r + e)
  for name, std in (("lora_a", 0.3), ("lora_b", 0.5), ("router", 1.0)):
    _fill(getattr(mode, name), rng, std)
  assert mode.router.shape == (P, 1, e)
  sd.lora_a[...] = mode.lora_a[...]
  sd.lora_b[...] = mode.lora_b[...]
  sd.router[...] = mode.router[...][:, 0, :]
  x_blp = jnp.asarray(rng.normal(size=(3, 4, P)), jnp.float32)
  want = np.asarray(sd(x_blp))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(mode(x_blp)), want, rtol=1e-6, atol=1e-6)


def test_molora_sd_is_molora_with_tied_down_projections():
  """MoLoRA with every lora_a[e] equal is MoLoRA-SD (same router, same lora_b)."""
  molora = _zero_init("molora", rank=4, num_experts=3)
  sd = _zero_init("molora_sd", rank=4, num_experts=3)
  rng = np.random.default_rng(0)
  for name, std in (("lora_a", 0.3), ("lora_b", 0.5), ("router", 1.0)):
    _fill(getattr(sd, name), rng, std)
  molora.lora_a[...] = jnp.broadcast_to(sd.lora_a[...], (3, P, 4))
  molora.lora_b[...] = sd.lora_b[...]
  molora.router[...] = sd.router[...]
  x_tp = jnp.asarray(rng.normal(size=(7, P)), jnp.float32)
  np.testing.assert_allclose(np.asarray(molora(x_tp)), np.asarray(sd(x_tp)),
                             rtol=1e-6, atol=1e-6)
