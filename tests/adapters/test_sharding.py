"""Sharded equals unsharded at the adapter level (8 fake CPU devices).

Forward and backward (gradients w.r.t. the AdapterParam state and x) of one
adapter, jitted once on a single device and once over a mesh with the batch
sharded and the adapter parameters placed by their logical axes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import sharding
from mode_jax.adapters import routing

B, L, P, Q, R, E = 8, 4, 16, 24, 4, 4


def _module(kind, p):
  cfg = adapters.AdapterConfig(kind=kind, rank=R, num_experts=1 if kind == "lora" else E,
                               expert_rank=p, alpha=8.0, a_init_scale=0.0,
                               router_init_scale=0.0)
  # P is 'embed' (fsdp), Q is 'heads' (model): lora_b is split on a model axis.
  module = adapters.make_adapter(cfg, P, Q, nnx.Rngs(0), in_axis="embed", out_axis="heads")
  rng = np.random.default_rng(1)  # zero init is cheap; fill from NumPy
  for name, std in (("lora_a", 0.3), ("lora_b", 0.5), ("router", 0.5)):
    if hasattr(module, name):
      v = getattr(module, name)
      v[...] = jnp.asarray(std * rng.normal(size=v.shape), jnp.float32)
  return module


def _fwd_bwd(graphdef, rest):
  def f(params, x_blp, ct_blq):
    def loss(params, x_blp):
      dy_blq = nnx.merge(graphdef, params, rest)(x_blp)
      return jnp.sum(dy_blq * ct_blq), dy_blq

    (_, dy_blq), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x_blp)
    return dy_blq, grads

  return jax.jit(f)


def _flat(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("kind,p", [("lora", 1), ("molora", 1), ("molora_sd", 1),
                                    ("mode", 1), ("mode", 2)])
def test_sharded_matches_single_device(kind, p):
  rng = np.random.default_rng(0)
  x_blp = jnp.asarray(rng.normal(size=(B, L, P)), jnp.float32)
  ct_blq = jnp.asarray(rng.normal(size=(B, L, Q)), jnp.float32)
  graphdef, params, rest = nnx.split(_module(kind, p), adapters.AdapterParam, ...)
  want = _flat(_fwd_bwd(graphdef, rest)(params, x_blp, ct_blq))
  assert np.abs(want[0]).max() > 0.1

  for layout in (dict(data=8), dict(data=2, model=4)):
    mesh = sharding.make_mesh(**layout)
    params_sh = jax.device_put(params, sharding.state_shardings(params, mesh))
    batch = sharding.named_sharding(("batch", "length", "embed"), x_blp.shape, mesh)
    x_sh, ct_sh = jax.device_put(x_blp, batch), jax.device_put(ct_blq, batch)
    assert len(x_sh.sharding.device_set) == 8 and x_sh.sharding.spec[0] is not None
    if "model" in layout:
      assert params_sh["lora_b"][...].sharding.spec[-1] == "model"
    with sharding.use_mesh(mesh):
      out = _fwd_bwd(graphdef, rest)(params_sh, x_sh, ct_sh)
    assert len(out[0].sharding.device_set) == 8
    got = _flat(out)
    assert len(got) == len(want)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=str(layout))


RANKWISE = [dict(kind="flylora", rank=8, top_k=3, alpha=16.0),
            dict(kind="smora", rank=8, top_k=3, alpha=6.0),
            dict(kind="mode", rank=R, num_experts=E, top_k=2, aux_loss_weight=0.1),
            dict(kind="mode", rank=R, num_experts=E, expert_rank=2, top_k=1)]


@pytest.mark.parametrize("kw", RANKWISE, ids=lambda kw: f"{kw['kind']}-k{kw['top_k']}")
def test_rankwise_sharded_matches_single_device(kw):
  """Top-k kinds: params and non-trained state (bias, frozen projection) placed by
  logical axes; forward, gradients and the recorded counts / loss agree."""
  cfg = adapters.AdapterConfig(**kw, b_init_scale=0.5, a_init_scale=0.3, router_init_scale=0.5)
  module = adapters.make_adapter(cfg, P, Q, nnx.Rngs(0), in_axis="embed", out_axis="heads")
  rng = np.random.default_rng(0)
  if hasattr(module, "bias"):
    module.bias[...] = jnp.asarray(0.05 * rng.normal(size=module.bias.shape), jnp.float32)
  x_blp = jnp.asarray(rng.normal(size=(B, L, P)), jnp.float32)
  ct_blq = jnp.asarray(rng.normal(size=(B, L, Q)), jnp.float32)
  graphdef, params, state = nnx.split(module, adapters.AdapterParam, ...)

  @jax.jit
  def f(params, state, x_blp, ct_blq):
    def loss(params, x_blp):
      m = nnx.merge(graphdef, params, state)
      dy_blq = m(x_blp)
      return jnp.sum(dy_blq * ct_blq), (dy_blq, routing.pop(m))

    (_, aux), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x_blp)
    return aux, grads

  want = _flat(f(params, state, x_blp, ct_blq))
  assert np.abs(want[0]).max() > 0.1
  for layout in (dict(data=8), dict(data=2, model=4)):
    mesh = sharding.make_mesh(**layout)
    params_sh = jax.device_put(params, sharding.state_shardings(params, mesh))
    state_sh = jax.device_put(state, sharding.state_shardings(state, mesh))
    batch = sharding.named_sharding(("batch", "length", "embed"), x_blp.shape, mesh)
    x_sh, ct_sh = jax.device_put(x_blp, batch), jax.device_put(ct_blq, batch)
    if "model" in layout:
      assert params_sh["lora_b"][...].sharding.spec[-1] == "model"
    with sharding.use_mesh(mesh):
      got = _flat(f(params_sh, state_sh, x_sh, ct_sh))
    assert len(got) == len(want)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=str(layout))
