"""FlyLoRA, SMoRA and top-k MoDE against an independent NumPy reference.

The reference below shares no code with `mode_jax.adapters`: it reads the
arrays out of the module and evaluates the METHODS.md equations in float64
with explicit Python loops over tokens, rank columns, groups and experts,
including its own top-k (repeated first-maximum search: lowest index wins a
tie, the behaviour documented for `jax.lax.top_k`). Inputs are checked to
keep the k-th and (k+1)-th scores apart, so float32 and float64 select alike.
Also: identity at init, dense MoDE unchanged for top_k in {None, E},
deterministic ties, FlyLoRA's frozen projection, and gradients.

Legend: T tokens, P input features, Q output features, R rank, E experts,
G groups, p expert rank, k kept per row.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax.adapters import routing

# --- the reference (float64, loops) -------------------------------------


def ref_topk(scores, k):
  """Indices of the k largest scores, lowest index first among equals."""
  chosen = []
  for _ in range(k):
    best = None
    for i, v in enumerate(scores):
      if i not in chosen and (best is None or v > scores[best]):
        best = i
    chosen.append(best)
  return sorted(chosen)


def _gap(scores, k):
  """Distance between the k-th and (k+1)-th largest score (inf if k = n)."""
  s = sorted(scores, reverse=True)
  return s[k - 1] - s[k] if k < len(s) else math.inf


def ref_flylora(x_tp, a_pr, b_rq, d_r, k, alpha):
  """dy, counts, min gap: dy_t = alpha/R sum_{j in topk(h + d)} h_j b_j."""
  t_count, r = x_tp.shape[0], a_pr.shape[1]
  dy_tq = np.zeros((t_count, b_rq.shape[1]))
  counts_r = np.zeros(r)
  gap = math.inf
  for t in range(t_count):
    h = [float(np.dot(x_tp[t], a_pr[:, j])) for j in range(r)]
    score = [h[j] + d_r[j] for j in range(r)]
    gap = min(gap, _gap(score, k))
    for j in ref_topk(score, k):
      counts_r[j] += 1
      dy_tq[t] += (alpha / r) * h[j] * b_rq[j]
  return dy_tq, counts_r, gap


def ref_smora(x_tp, a_pr, b_rq, router_pr, bias_r, k, alpha):
  """dy_t = alpha/k sum_{i in topk(s + b)} g_i h_i b_i, g_i = k (s_i+b_i) / sum_topk(s+b)."""
  t_count, r = x_tp.shape[0], a_pr.shape[1]
  dy_tq = np.zeros((t_count, b_rq.shape[1]))
  counts_r = np.zeros(r)
  gap = math.inf
  for t in range(t_count):
    sb = [1.0 / (1.0 + math.exp(-float(np.dot(x_tp[t], router_pr[:, i])))) + bias_r[i]
          for i in range(r)]
    gap = min(gap, _gap(sb, k))
    chosen = ref_topk(sb, k)
    denom = sum(sb[i] for i in chosen)
    for i in chosen:
      counts_r[i] += 1
      g = k * sb[i] / denom
      h = float(np.dot(x_tp[t], a_pr[:, i]))
      dy_tq[t] += (alpha / k) * g * h * b_rq[i]
  return dy_tq, counts_r, gap


def ref_mode_topk(x_tp, a_pr, b_erq, router_pge, p, k, s):
  """Top-k MoDE and its Switch loss E * mean_g sum_e f[g,e] P[g,e]."""
  t_count = x_tp.shape[0]
  e_count, r, q = b_erq.shape
  g_count = router_pge.shape[1]
  dy_tq = np.zeros((t_count, q))
  frac_ge = np.zeros((g_count, e_count))
  prob_ge = np.zeros((g_count, e_count))
  gap = math.inf
  for t in range(t_count):
    for g in range(g_count):
      logits = [float(np.dot(x_tp[t], router_pge[:, g, e])) for e in range(e_count)]
      gap = min(gap, _gap(logits, k))
      top = max(logits)
      dense = [math.exp(v - top) for v in logits]
      for e in range(e_count):
        prob_ge[g, e] += dense[e] / sum(dense) / t_count
      chosen = ref_topk(logits, k)
      z = sum(math.exp(logits[e] - top) for e in chosen)
      w = [math.exp(logits[e] - top) / z if e in chosen else 0.0 for e in range(e_count)]
      for e in chosen:
        frac_ge[g, e] += 1.0 / (t_count * k)
      for i in range(p):
        j = g * p + i
        h = float(np.dot(x_tp[t], a_pr[:, j]))
        bt = np.zeros(q)
        for e in range(e_count):
          bt += w[e] * b_erq[e, j]
        dy_tq[t] += s * h * bt
  aux = e_count * np.mean([sum(frac_ge[g, e] * prob_ge[g, e] for e in range(e_count))
                           for g in range(g_count)])
  return dy_tq, aux, gap


# --- helpers ---------------------------------------------------------------


def _arr(v):
  return np.asarray(v[...], np.float64)


def _fill(module, seed, stds):
  rng = np.random.default_rng(seed)
  for name, std in stds.items():
    v = getattr(module, name)
    v[...] = jnp.asarray(std * rng.normal(size=v.shape), jnp.float32)


def _call(module, x):
  graphdef, state = nnx.split(module)
  return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)


def _call_stats(module, x):
  """(dy, the statistics it sowed); a bare module's are keyed by its path, ""."""
  graphdef, state = nnx.split(module)

  def f(state, x):
    m = nnx.merge(graphdef, state)
    dy = m(x)
    return dy, routing.pop(m)

  return jax.jit(f)(state, x)


# --- FlyLoRA ---------------------------------------------------------------

FLY_CASES = [  # (R, k, alpha, density, lead, P, Q)
    (8, 3, 16.0, None, (2, 7), 16, 10),
    (8, 1, None, 0.5, (9,), 12, 6),
    (6, 6, 3.0, None, (2, 2, 3), 10, 5),   # k = R: every column, plain LoRA of h
    (32, 8, 64.0, None, (4, 8), 64, 12),   # published R, k, alpha, rho
]


@pytest.mark.parametrize("r,k,alpha,density,lead,P,Q", FLY_CASES)
def test_flylora_matches_reference(r, k, alpha, density, lead, P, Q):
  cfg = adapters.AdapterConfig(kind="flylora", rank=r, top_k=k, alpha=alpha, density=density)
  module = adapters.make_adapter(cfg, P, Q, nnx.Rngs(r + k))
  _fill(module, r * 10 + k, {"lora_b": 0.5})
  rng = np.random.default_rng(P + Q)
  h_std = float(np.abs(_arr(module.lora_a)).sum(0).mean())  # scale of h
  module.bias[...] = jnp.asarray(0.3 * h_std * rng.normal(size=r), jnp.float32)
  x = rng.normal(size=(*lead, P)).astype(np.float32)
  dy, stats = _call_stats(module, jnp.asarray(x))
  want, counts, gap = ref_flylora(x.reshape(-1, P).astype(np.float64), _arr(module.lora_a),
                                  _arr(module.lora_b), _arr(module.bias), k,
                                  r if alpha is None else alpha)
  assert gap > 1e-4, gap  # selections cannot differ between float32 and float64
  assert dy.shape == (*lead, Q) and np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(dy).reshape(-1, Q), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(stats[""]["counts"]), counts)
  assert module.bias.get_metadata("rate") == pytest.approx(1e-3)
  if k < r:  # the bias matters: without it another selection and delta
    module.bias[...] = jnp.zeros((r,))
    nobias, _, _ = ref_flylora(x.reshape(-1, P).astype(np.float64), _arr(module.lora_a),
                               _arr(module.lora_b), np.zeros(r), k,
                               r if alpha is None else alpha)
    assert np.abs(nobias - want).max() > 1e-3


@pytest.mark.parametrize("r,k,density,P", [(8, 3, None, 16), (32, 8, None, 2048),
                                           (4, 2, 0.1, 25), (4, 1, 1.0, 7)])
def test_flylora_projection_is_sparse_frozen_and_seeded(r, k, density, P):
  cfg = adapters.AdapterConfig(kind="flylora", rank=r, top_k=k, density=density)
  module = adapters.make_adapter(cfg, P, 5, nnx.Rngs(3))
  a = np.asarray(module.lora_a[...])
  rho = k / r if density is None else density
  nnz = max(1, round(rho * P))
  assert a.shape == (P, r) and a.dtype == np.float32
  np.testing.assert_array_equal((a != 0).sum(0), np.full(r, nnz))  # exactly rho*P per column
  assert type(module.lora_a) is adapters.AdapterState  # frozen: no gradient, no optimizer
  assert "lora_a" not in nnx.state(module, adapters.AdapterParam)
  if nnz * r >= 1000:  # values N(0, 1/R^2)
    assert a[a != 0].std() == pytest.approx(1 / r, rel=0.1)
  # Regenerated from the saved seed: the same array, bit for bit.
  from mode_jax.adapters import flylora
  again = flylora.sparse_projection(jnp.asarray(module.seed[...]), P, r, nnz)
  np.testing.assert_array_equal(np.asarray(again), a)
  # Another key gives another projection; the same key the same one.
  other = adapters.make_adapter(cfg, P, 5, nnx.Rngs(4))
  same = adapters.make_adapter(cfg, P, 5, nnx.Rngs(3))
  assert not np.array_equal(np.asarray(other.lora_a[...]), a)
  np.testing.assert_array_equal(np.asarray(same.lora_a[...]), a)


# --- SMoRA -----------------------------------------------------------------

SMORA_CASES = [  # (R, k, alpha, lead, P, Q)
    (8, 3, 6.0, (2, 7), 16, 10),
    (8, 1, None, (9,), 12, 6),
    (5, 5, 2.0, (2, 2, 3), 10, 5),
    (64, 8, 16.0, (3, 8), 32, 12),         # published R, k, alpha
]


@pytest.mark.parametrize("r,k,alpha,lead,P,Q", SMORA_CASES)
def test_smora_matches_reference(r, k, alpha, lead, P, Q):
  cfg = adapters.AdapterConfig(kind="smora", rank=r, top_k=k, alpha=alpha, a_init_scale=0.0,
                               router_init_scale=0.0)
  module = adapters.make_adapter(cfg, P, Q, nnx.Rngs(0))
  _fill(module, r * 10 + k, {"lora_a": 0.3, "lora_b": 0.5, "router": 0.4})
  rng = np.random.default_rng(P + Q)
  module.bias[...] = jnp.asarray(0.1 * rng.normal(size=r), jnp.float32)
  x = rng.normal(size=(*lead, P)).astype(np.float32)
  dy, stats = _call_stats(module, jnp.asarray(x))
  args = (x.reshape(-1, P).astype(np.float64), _arr(module.lora_a), _arr(module.lora_b),
          _arr(module.router))
  want, counts, gap = ref_smora(*args, _arr(module.bias), k, k if alpha is None else alpha)
  assert gap > 1e-4, gap
  assert dy.shape == (*lead, Q) and np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(dy).reshape(-1, Q), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(stats[""]["counts"]), counts)
  assert module.bias.get_metadata("rate") == pytest.approx(1e-5)
  if k < r:
    nobias, _, _ = ref_smora(*args, np.zeros(r), k, k if alpha is None else alpha)
    assert np.abs(nobias - want).max() > 1e-3


def test_smora_gates_sum_to_k_on_the_selected_ranks():
  cfg = adapters.AdapterConfig(kind="smora", rank=8, top_k=3, router_init_scale=0.5)
  module = adapters.make_adapter(cfg, 12, 4, nnx.Rngs(1))
  g = np.asarray(module.gates(jnp.asarray(np.random.default_rng(0).normal(size=(5, 12)),
                                          jnp.bfloat16)))
  assert g.dtype == np.float32
  np.testing.assert_array_equal((g > 0).sum(-1), 3)
  np.testing.assert_allclose(g.sum(-1), 3.0, rtol=1e-6)


# --- MoDE top-k ------------------------------------------------------------

MODE_CASES = [  # (R, E, p, k, alpha, lead, P, Q)
    (4, 4, 1, 2, None, (2, 5), 16, 10),
    (4, 6, 2, 1, 7.0, (9,), 12, 20),
    (6, 5, 3, 3, 2.0, (2, 2, 3), 12, 7),
    (4, 16, 1, 2, None, (3, 4), 16, 8),    # the benchmark's 16x4 top-2
]


@pytest.mark.parametrize("r,e,p,k,alpha,lead,P,Q", MODE_CASES)
def test_mode_topk_matches_reference(r, e, p, k, alpha, lead, P, Q):
  cfg = adapters.AdapterConfig(kind="mode", rank=r, num_experts=e, expert_rank=p, top_k=k,
                               alpha=alpha, aux_loss_weight=0.01, a_init_scale=0.0,
                               router_init_scale=0.0)
  module = adapters.make_adapter(cfg, P, Q, nnx.Rngs(0))
  _fill(module, r + e + p + k, {"lora_a": 0.3, "lora_b": 0.5, "router": 0.7})
  x = np.random.default_rng(P + Q).normal(size=(*lead, P)).astype(np.float32)
  dy, stats = _call_stats(module, jnp.asarray(x))
  want, aux, gap = ref_mode_topk(x.reshape(-1, P).astype(np.float64), _arr(module.lora_a),
                                 _arr(module.lora_b), _arr(module.router), p, k, cfg.scale)
  assert gap > 1e-4, gap
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(dy).reshape(-1, Q), want, rtol=1e-5, atol=1e-5)
  s = stats[""]
  assert float(s["aux_loss"]) == pytest.approx(aux, rel=1e-5)
  assert float(s["aux_weight"]) == pytest.approx(0.01)
  np.testing.assert_allclose(float(s["load"].sum()), 1.0, atol=1e-6)
  graphdef, state = nnx.split(module)
  gates = jax.jit(lambda s, x: nnx.merge(graphdef, s).gates(x))(state, jnp.asarray(x))
  gates = np.asarray(gates).reshape(-1, r // p, e)
  np.testing.assert_array_equal((gates > 0).sum(-1), k)
  np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-6)  # renormalised
  # Without the loss nothing extra is recorded.
  plain = adapters.make_adapter(
      adapters.AdapterConfig(kind="mode", rank=r, num_experts=e, expert_rank=p, top_k=k),
      P, Q, nnx.Rngs(0))
  _, st = _call_stats(plain, jnp.asarray(x))
  assert set(st[""]) == {"entropy", "load"}


@pytest.mark.parametrize("p", [1, 2, 4])
def test_mode_topk_equal_to_e_is_dense_mode_bit_for_bit(p):
  """top_k = E takes today's code path: the same jaxpr and the same bits."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 12)), jnp.float32)
  outs, jaxprs = [], []
  for k in (None, 3):
    cfg = adapters.AdapterConfig(kind="mode", rank=4, num_experts=3, expert_rank=p, top_k=k,
                                 b_init_scale=0.5, router_init_scale=0.5)
    module = adapters.make_adapter(cfg, 12, 9, nnx.Rngs(0))
    graphdef, state = nnx.split(module)
    fwd = lambda state, x, graphdef=graphdef: nnx.merge(graphdef, state)(x)
    jaxprs.append(str(jax.make_jaxpr(fwd)(state, x)))
    outs.append(np.asarray(jax.jit(fwd)(state, x)))
  assert jaxprs[0] == jaxprs[1] and "top_k" not in jaxprs[0]
  np.testing.assert_array_equal(outs[0], outs[1])


# --- identity at init, ties, gradients -----------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kw", [dict(kind="flylora", rank=8, top_k=3),
                                dict(kind="smora", rank=8, top_k=3, alpha=6.0),
                                dict(kind="mode", rank=4, num_experts=4, top_k=2,
                                     aux_loss_weight=0.1)])
def test_identity_at_init(kw, dtype):
  """Default config (lora_b = 0): the delta is exactly zero."""
  module = adapters.make_adapter(adapters.AdapterConfig(**kw), 12, 9, nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 12)), dtype)
  dy = _call(module, x)
  assert dy.shape == (2, 5, 9) and dy.dtype == dtype
  assert not np.any(np.asarray(dy, np.float32))


def test_topk_mask_ties_go_to_the_lower_index():
  m = np.asarray(routing.topk_mask(jnp.asarray([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0],
                                                [3.0, 1.0, 3.0, 1.0]]), 2))
  np.testing.assert_array_equal(m, [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0]])


@pytest.mark.parametrize("kind", ["flylora", "smora", "mode"])
def test_tied_scores_select_the_first_k(kind):
  """All scores equal (identical columns / zero router): columns or experts 0..k-1."""
  kw = dict(kind=kind, rank=6, top_k=2, b_init_scale=1.0, router_init_scale=0.0)
  if kind == "mode":
    kw.update(rank=2, num_experts=5)
  module = adapters.make_adapter(adapters.AdapterConfig(**kw), 4, 3, nnx.Rngs(0))
  if kind == "flylora":
    module.lora_a[...] = jnp.ones_like(module.lora_a[...])  # h identical across columns
  x = jnp.ones((3, 4))
  dy = module(x)
  stats = routing.pop(module)
  if kind == "mode":
    w = np.asarray(module.gates(x))
    np.testing.assert_array_equal(w, np.broadcast_to([0.5, 0.5, 0, 0, 0], (3, 2, 5)))
    want = np.einsum("tr,rq->tq", np.asarray(x @ module.lora_a[...]),
                     0.5 * np.asarray(module.lora_b[...][0] + module.lora_b[...][1]))
  else:
    np.testing.assert_array_equal(np.asarray(stats[""]["counts"]), [3, 3, 0, 0, 0, 0])
    h = np.asarray(x @ module.lora_a[...])
    g = 1.0  # SMoRA: k * 0.5 / (2 * 0.5)
    scale = module.scale
    want = scale * g * np.einsum("tr,rq->tq", h[:, :2], np.asarray(module.lora_b[...])[:2])
  np.testing.assert_allclose(np.asarray(dy), want, rtol=1e-5, atol=1e-6)


def _grads(module, x, ct):
  graphdef, params, rest = nnx.split(module, adapters.AdapterParam, ...)

  def loss(params):
    return jnp.sum(nnx.merge(graphdef, params, rest)(x) * ct)

  return loss, params, jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("kw,names", [
    (dict(kind="flylora", rank=8, top_k=3), {"lora_b"}),
    (dict(kind="smora", rank=8, top_k=3, alpha=6.0), {"lora_a", "lora_b", "router"}),
    (dict(kind="mode", rank=4, num_experts=4, top_k=2, expert_rank=2),
     {"lora_a", "lora_b", "router"}),
])
def test_gradients(kw, names):
  """Only AdapterParams get gradients; all of them non-zero; matches a central difference."""
  cfg = adapters.AdapterConfig(**kw, b_init_scale=0.5, a_init_scale=0.3, router_init_scale=0.5)
  module = adapters.make_adapter(cfg, 16, 10, nnx.Rngs(0))
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 16)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=(2, 8, 10)), jnp.float32)
  loss, params, grads = _grads(module, x, ct)
  assert set(grads.keys()) == names
  for name in names:
    g = np.asarray(grads[name][...])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, name
  # The selection is piecewise constant: a small step keeps it (checked by
  # the loss being smooth around the point) and the directional derivative
  # matches a central difference.
  d = jax.tree.map(lambda v: jnp.asarray(0.1 * rng.normal(size=v.shape), jnp.float32), params)
  analytic = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grads),
                                                       jax.tree.leaves(d)))
  eps = 1e-3
  shift = lambda sign: jax.tree.map(lambda a, v: a + sign * eps * v, params, d)
  loss_jit = jax.jit(loss)
  numeric = (float(loss_jit(shift(1))) - float(loss_jit(shift(-1)))) / (2 * eps)
  assert numeric == pytest.approx(analytic, rel=2e-3, abs=2e-3)
