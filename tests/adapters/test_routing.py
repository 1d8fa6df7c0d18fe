"""Routing statistics and float32 routing under bfloat16 inputs.

Each call sows its statistics as the adapter's `routing.RoutingStats` (an
`nnx.Intermediate`); `routing.pop` removes them as {module path: {"entropy",
"load"}} (the path of a bare adapter module is "").
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax.adapters import routing

P, Q, R, E = 12, 10, 4, 3
MIXTURES = [("molora", 1), ("molora_sd", 1), ("mode", 1), ("mode", 2), ("mode", R)]


def _module(kind, p=1, b_init_scale=0.0):
  e = 1 if kind == "lora" else E
  cfg = adapters.AdapterConfig(kind=kind, rank=R, num_experts=e, expert_rank=p,
                               b_init_scale=b_init_scale, router_init_scale=0.5)
  return adapters.make_adapter(cfg, P, Q, nnx.Rngs(0))


class _Pair(nnx.Module):
  """Two adapters at paths "a" and "b/adapter", to see the keys."""

  def __init__(self):
    self.a = _module("mode")
    self.b = nnx.Dict(adapter=_module("molora"))

  def __call__(self, x):
    return self.a(x) + self.b["adapter"](x)


def _x(dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, P)), dtype)


def _gates_tge(module, x):
  """Gates [T, G, E] recomputed in NumPy from the module's router."""
  router = np.asarray(module.router[...], np.float64)
  router_pge = router[:, None, :] if router.ndim == 2 else router
  logits = np.einsum("tp,pge->tge", np.asarray(x, np.float64).reshape(-1, P), router_pge)
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


@pytest.mark.parametrize("kind,p", MIXTURES)
def test_mixture_sows_routing_stats(kind, p):
  module = _module(kind, p)
  x = _x()
  module(x)
  stats = routing.pop(module)
  assert set(stats) == {""}
  assert routing.pop(module) == {}  # popped: gone from the module
  sown = stats[""]
  assert set(sown) == {"entropy", "load"}
  entropy, load = np.asarray(sown["entropy"]), np.asarray(sown["load"])
  assert entropy.shape == () and load.shape == (E,)
  assert entropy.dtype == np.float32 and load.dtype == np.float32
  # Load is the mean gate over tokens and groups: it sums to 1 (not to G).
  assert load.sum() == pytest.approx(1.0, abs=1e-6)
  assert np.all(load >= 0)
  assert 0 <= entropy <= np.log(E) + 1e-6
  w = _gates_tge(module, x)
  np.testing.assert_allclose(load, w.reshape(-1, E).mean(0), rtol=1e-5, atol=1e-6)
  want_entropy = -(w * np.log(w)).sum(-1).mean()
  assert float(entropy) == pytest.approx(want_entropy, rel=1e-5, abs=1e-6)


def test_stats_are_keyed_by_module_path_and_a_second_call_replaces_the_first():
  pair = _Pair()
  pair(_x())
  first = pair.a.routing.get_value()["load"]
  pair(2.0 * _x())
  stats = routing.pop(pair)
  assert set(stats) == {"a", "b/adapter"}
  assert not np.allclose(np.asarray(stats["a"]["load"]), np.asarray(first))
  assert set(routing.by_matrix(stats)) == {"a", "b"}  # logs drop the "adapter" attribute


def test_lora_sows_nothing():
  module = _module("lora")
  module(_x())
  assert routing.pop(module) == {}


def test_by_matrix_splits_stacked_layers():
  stats = {"layers/attn/q/adapter": {"load": jnp.ones((3, E)) / E, "entropy": jnp.arange(3.0)}}
  per = routing.by_matrix(stats)
  assert set(per) == {"layers/0/attn/q", "layers/1/attn/q", "layers/2/attn/q"}
  assert float(per["layers/2/attn/q"]["entropy"]) == 2.0


def test_stats_as_auxiliary_output_of_a_jitted_loss():
  module = _module("mode", 2)
  graphdef, params, rest = nnx.split(module, adapters.AdapterParam, ...)

  def loss(params, x):
    model = nnx.merge(graphdef, params, rest)
    dy = model(x)
    return jnp.sum(dy), routing.pop(model)

  (_, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, _x())
  assert set(stats) == {""} and stats[""]["load"].shape == (E,)
  assert float(stats[""]["load"].sum()) == pytest.approx(1.0, abs=1e-6)
  assert set(grads.keys()) == {"lora_a", "lora_b", "router"}


@pytest.mark.parametrize("p", [1, 2, R])
def test_mode_gates_float32_under_bfloat16(p):
  module = _module("mode", p)
  x = _x(jnp.bfloat16)
  w = module.gates(x)
  assert w.dtype == jnp.float32 and w.shape == (2, 5, R // p, E)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)
  # The router sees the bfloat16 x upcast, not a bfloat16 product.
  np.testing.assert_allclose(np.asarray(w).reshape(-1, R // p, E), _gates_tge(module, x),
                             rtol=1e-5, atol=1e-6)


def test_softmax_gates_float32_under_bfloat16():
  router = jnp.asarray(np.random.default_rng(1).normal(size=(P, 2, E)), jnp.bfloat16)
  w = routing.softmax_gates(_x(jnp.bfloat16), router)
  assert w.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("kind,p", [("lora", 1)] + MIXTURES)
def test_bfloat16_input_gives_bfloat16_output(kind, p):
  module = _module(kind, p, b_init_scale=0.5)
  y16 = module(_x(jnp.bfloat16))
  stats = routing.pop(module)
  assert y16.dtype == jnp.bfloat16 and y16.shape == (2, 5, Q)
  y32 = module(_x(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32),
                             rtol=5e-2, atol=5e-2 * float(jnp.abs(y32).max()))
  assert all(s["load"].dtype == jnp.float32 for s in stats.values())
  assert len(stats) == (0 if kind == "lora" else 1)
