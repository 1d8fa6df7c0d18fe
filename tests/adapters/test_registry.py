"""The invariants every registered adapter kind must keep, over `registry.examples()`.

A new kind gets these tests by being registered (and needs a NumPy reference
below, which the reference test asks for by name): identity at init, the
NumPy reference, sharded equals unsharded, count equals built, statistics
that survive `nnx.remat`, `jax.checkpoint` and `nnx.scan`. Scanned equals
looped models: tests/models/test_scan.py. Gin files: tests/test_configs.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import sharding
from mode_jax.adapters import registry
from mode_jax.adapters import routing
from mode_jax.models import stacking

from . import test_rankwise_reference as topk_ref
from . import test_reference as dense_ref

EXAMPLES = registry.examples()
IDS = [f"{k}-{i}" for i, (k, _) in enumerate(EXAMPLES)]
P, Q = 12, 10


def _ref_rankwise(kind, module, x_tp, cfg):
  a = lambda v: np.asarray(v[...], np.float64)
  alpha = cfg.alpha
  if kind == "flylora":
    return topk_ref.ref_flylora(x_tp, a(module.lora_a), a(module.lora_b), a(module.bias),
                                cfg.top_k, cfg.rank if alpha is None else alpha)
  return topk_ref.ref_smora(x_tp, a(module.lora_a), a(module.lora_b), a(module.router),
                            a(module.bias), cfg.top_k, cfg.top_k if alpha is None else alpha)


def _ref_mode(module, x_tp, cfg):
  if not cfg.sparse_experts:
    return dense_ref.reference("mode", module, x_tp, cfg), None, math.inf
  a = lambda v: np.asarray(v[...], np.float64)
  return topk_ref.ref_mode_topk(x_tp, a(module.lora_a), a(module.lora_b), a(module.router),
                                cfg.expert_rank, cfg.top_k, cfg.scale)


# kind -> reference(module, x [T, P] float64, cfg) -> (dy [T, Q], extra, min score gap)
REFERENCES = {
    "lora": lambda m, x, c: (dense_ref.reference("lora", m, x, c), None, math.inf),
    "molora": lambda m, x, c: (dense_ref.reference("molora", m, x, c), None, math.inf),
    "molora_sd": lambda m, x, c: (dense_ref.reference("molora_sd", m, x, c), None, math.inf),
    "mode": _ref_mode,
    "flylora": lambda m, x, c: _ref_rankwise("flylora", m, x, c),
    "smora": lambda m, x, c: _ref_rankwise("smora", m, x, c),
}


def _module(kw, seed=0, **axes):
  cfg = adapters.AdapterConfig(**kw)
  module = adapters.make_adapter(cfg, P, Q, nnx.Rngs(seed), **axes)
  rng = np.random.default_rng(seed + 1)
  for path, v in nnx.state(module, adapters.ADAPTER).flat_state():
    if isinstance(v, adapters.BalancingBias):
      v.set_value(jnp.asarray(0.05 * rng.normal(size=v.shape), jnp.float32))
    elif isinstance(v, adapters.AdapterParam):
      v.set_value(jnp.asarray(0.5 * rng.normal(size=v.shape), jnp.float32))
  return cfg, module


def _x(lead=(2, 5), seed=3):
  return np.random.default_rng(seed).normal(size=(*lead, P)).astype(np.float32)


def _call(module, x):
  graphdef, state = nnx.split(module)

  def f(state, x):
    m = nnx.merge(graphdef, state)
    return m(x), routing.pop(m)

  return jax.jit(f)(state, x)


def test_every_kind_has_examples_and_a_reference():
  assert set(registry.names()) == set(adapters.KINDS)
  assert {k for k, _ in EXAMPLES} == set(registry.names())
  missing = set(registry.names()) - set(REFERENCES)
  assert not missing, f"register a NumPy reference in {__file__} for {missing}"


@pytest.mark.parametrize("kind,kw", EXAMPLES, ids=IDS)
def test_identity_at_init(kind, kw):
  module = adapters.make_adapter(adapters.AdapterConfig(**kw), P, Q, nnx.Rngs(0))
  dy, _ = _call(module, jnp.asarray(_x()))
  assert dy.shape == (2, 5, Q) and not np.any(np.asarray(dy))


@pytest.mark.parametrize("kind,kw", EXAMPLES, ids=IDS)
def test_matches_numpy_reference(kind, kw):
  cfg, module = _module(kw)
  x = _x()
  dy, stats = _call(module, jnp.asarray(x))
  want, extra, gap = REFERENCES[kind](module, x.reshape(-1, P).astype(np.float64), cfg)
  assert gap > 1e-4, gap  # float32 and float64 select alike
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(dy).reshape(-1, Q), want, rtol=1e-5, atol=1e-5)
  if registry.get(kind).balancing:  # extra = the reference's selection counts
    np.testing.assert_array_equal(np.asarray(stats[""]["counts"]), extra)
  if cfg.aux_loss_weight:  # extra = the reference's balancing loss
    assert float(stats[""]["aux_loss"]) == pytest.approx(extra, rel=1e-5)


@pytest.mark.parametrize("kind,kw", EXAMPLES, ids=IDS)
def test_count_equals_built(kind, kw):
  cfg = adapters.AdapterConfig(**kw)
  module = nnx.eval_shape(lambda: adapters.make_adapter(cfg, P, Q, nnx.Rngs(0)))
  size = lambda f: sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, f)))
  # Frozen weights: adapter state that is neither a balancing bias nor a seed.
  frozen = nnx.All(adapters.AdapterState, nnx.Not(adapters.BalancingBias),
                   nnx.Not(nnx.PathContains("seed")))
  assert adapters.counting.per_matrix(cfg, P, Q) == {
      "trainable": size(adapters.TRAINABLE), "frozen": size(frozen)}
  assert (size(adapters.BalancingBias) > 0) == registry.get(kind).balancing


@pytest.mark.parametrize("kind,kw", EXAMPLES, ids=IDS)
def test_sharded_equals_unsharded(kind, kw):
  _, module = _module(kw, in_axis="embed", out_axis="heads")
  graphdef, params, rest = nnx.split(module, adapters.TRAINABLE, ...)
  x = jnp.asarray(_x((8, 3)))

  @jax.jit
  def f(params, rest, x):
    def loss(params, x):
      m = nnx.merge(graphdef, params, rest)
      dy = m(x)
      return jnp.sum(dy * dy), (dy, routing.pop(m))
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

  want = jax.tree.leaves(f(params, rest, x))
  mesh = sharding.make_mesh(data=2, model=4)
  put = lambda t: jax.device_put(t, sharding.state_shardings(t, mesh))
  x_sh = jax.device_put(x, sharding.named_sharding(("batch", "length", "embed"), x.shape, mesh))
  with sharding.use_mesh(mesh):
    got = jax.tree.leaves(f(put(params), put(rest), x_sh))
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def _close(got, want):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


class _Stack(nnx.Module):
  """Two layers of one adapter, stacked as the scanned transformer stacks them,
  called with nnx.scan."""

  def __init__(self, cfg):
    layers = [adapters.make_adapter(cfg, P, P, nnx.Rngs(i)) for i in range(2)]
    self.layers = nnx.merge(nnx.graphdef(layers[0]),
                            stacking.stack_variables([nnx.state(m) for m in layers]))

  def __call__(self, x, remat):
    def body(layer, x):
      return x + layer(x)
    body = nnx.remat(body) if remat else body
    return nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=nnx.Carry)(self.layers, x)


def _jit_call(fn, module, x):
  """fn(module, x) jitted over the module's split state; (output, popped stats)."""
  graphdef, state = nnx.split(module)

  def f(state, x):
    m = nnx.merge(graphdef, state)
    return fn(m, x), routing.pop(m)

  return jax.jit(f)(state, x)


@pytest.mark.parametrize("kind,kw", EXAMPLES, ids=IDS)
def test_statistics_survive_nnx_scan_nnx_remat_and_jax_checkpoint(kind, kw):
  """The sown entry is the same under every transform (no tracer escapes)."""
  cfg = adapters.AdapterConfig(**{**kw, "b_init_scale": 0.5})
  x = jnp.asarray(_x())
  module = adapters.make_adapter(cfg, P, Q, nnx.Rngs(0))
  graphdef, state = nnx.split(module)
  want_dy, want = _call(module, x)

  def fn(state, x):
    m = nnx.merge(graphdef, state)
    return m(x), nnx.pop(m, routing.RoutingStats)

  dy, st = jax.jit(jax.checkpoint(fn))(state, x)
  _close(dy, want_dy)
  jax.tree.map(_close, routing.from_state(st), want)
  dy, got = _jit_call(lambda m, x: nnx.remat(lambda m, x: m(x))(m, x), module, x)
  _close(dy, want_dy)
  jax.tree.map(_close, got, want)

  # nnx.scan (with and without nnx.remat) over two stacked layers: the
  # entries come out stacked, equal to calling each layer in turn.
  stack = _Stack(cfg)
  graphdef, stacked = nnx.split(stack.layers)

  def by_hand(stacked, x):
    h, per_layer = x, []
    for i in range(2):
      layer = nnx.merge(graphdef, jax.tree.map(lambda v, i=i: v[i], stacked))
      h = h + layer(h)
      per_layer.append(routing.pop(layer))
    return h, per_layer

  h, per_layer = jax.jit(by_hand)(stacked, x)
  for use_remat in (False, True):
    out, got = _jit_call(lambda m, x, r=use_remat: m(x, r), stack, x)
    _close(out, h)
    if not want:  # nothing sown (LoRA)
      assert got == {} and per_layer[0] == {}
      continue
    for i in range(2):
      jax.tree.map(lambda g, w, i=i: _close(g[i], w), got["layers"], per_layer[i][""])
