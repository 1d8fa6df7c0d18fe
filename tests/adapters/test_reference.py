"""Adapters against an independent NumPy reference of METHODS.md.

The reference below shares no code with `mode_jax.adapters`: it reads the
parameter arrays out of the module and evaluates the METHODS.md equations in
float64 with explicit Python loops over experts, rank columns and groups
(tokens stay vectorised). Also the identity-at-init test of every kind.

Legend: T tokens, P input features, Q output features, R rank, E experts,
G groups, p expert rank.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters

# --- the reference (float64, loops) -------------------------------------


def _softmax_te(logits_te):
  z_te = logits_te - logits_te.max(axis=-1, keepdims=True)
  ez_te = np.exp(z_te)
  return ez_te / ez_te.sum(axis=-1, keepdims=True)


def ref_lora(x_tp, a_pr, b_rq, s):
  """dy = s * (x @ lora_a) @ lora_b, one rank column at a time."""
  dy_tq = np.zeros((x_tp.shape[0], b_rq.shape[1]))
  for j in range(a_pr.shape[1]):
    h_t = x_tp @ a_pr[:, j]
    dy_tq += s * h_t[:, None] * b_rq[j][None, :]
  return dy_tq


def ref_molora(x_tp, a_epr, b_erq, router_pe, s):
  """dy = s * sum_e w_e (x @ lora_a[e]) @ lora_b[e]."""
  w_te = _softmax_te(x_tp @ router_pe)
  dy_tq = np.zeros((x_tp.shape[0], b_erq.shape[2]))
  for e in range(b_erq.shape[0]):
    for j in range(b_erq.shape[1]):
      h_t = x_tp @ a_epr[e][:, j]
      dy_tq += s * w_te[:, e, None] * h_t[:, None] * b_erq[e, j][None, :]
  return dy_tq


def ref_molora_sd(x_tp, a_pr, b_erq, router_pe, s):
  """dy = s * sum_e w_e (x @ lora_a) @ lora_b[e]."""
  w_te = _softmax_te(x_tp @ router_pe)
  dy_tq = np.zeros((x_tp.shape[0], b_erq.shape[2]))
  for e in range(b_erq.shape[0]):
    for j in range(b_erq.shape[1]):
      h_t = x_tp @ a_pr[:, j]
      dy_tq += s * w_te[:, e, None] * h_t[:, None] * b_erq[e, j][None, :]
  return dy_tq


def ref_mode(x_tp, a_pr, b_erq, router_pge, p, s):
  """dy = s * sum_j h_j b~_j with b~_j = sum_e w[g(j), e] lora_b[e, j]."""
  t = x_tp.shape[0]
  e_count, r, q = b_erq.shape
  g_count = router_pge.shape[1]
  assert g_count * p == r
  dy_tq = np.zeros((t, q))
  for g in range(g_count):
    w_te = _softmax_te(x_tp @ router_pge[:, g, :])
    for i in range(p):
      j = g * p + i  # groups are consecutive runs of p columns
      h_t = x_tp @ a_pr[:, j]
      bt_tq = np.zeros((t, q))
      for e in range(e_count):
        bt_tq += w_te[:, e, None] * b_erq[e, j][None, :]
      dy_tq += s * h_t[:, None] * bt_tq
  return dy_tq


def reference(kind, module, x, cfg):
  """The METHODS.md delta of `module` on x [..., P], in float64."""
  x_tp = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  arr = lambda v: np.asarray(v[...], np.float64)
  s = (cfg.rank if cfg.alpha is None else cfg.alpha) / cfg.rank
  if kind == "lora":
    dy_tq = ref_lora(x_tp, arr(module.lora_a), arr(module.lora_b), s)
  elif kind == "molora":
    dy_tq = ref_molora(x_tp, arr(module.lora_a), arr(module.lora_b), arr(module.router), s)
  elif kind == "molora_sd":
    dy_tq = ref_molora_sd(x_tp, arr(module.lora_a), arr(module.lora_b), arr(module.router), s)
  else:
    dy_tq = ref_mode(x_tp, arr(module.lora_a), arr(module.lora_b), arr(module.router),
                     cfg.expert_rank, s)
  return dy_tq.reshape(*x.shape[:-1], -1)


# --- the tests -----------------------------------------------------------


def _call(module, x):
  """The module's forward, jitted (one compile instead of many eager ops)."""
  graphdef, state = nnx.split(module)
  return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))(state, x)


# (kind, rank, experts, expert_rank, alpha, leading dims of x, P, Q); MoDE
# with p in {1, 2, R}; several with leading batch dims [B, L, P].
CASES = [
    ("lora", 8, 1, 1, None, (5,), 12, 7),
    ("lora", 6, 1, 1, 3.0, (2, 3), 16, 10),
    ("molora", 4, 3, 1, None, (2, 3), 16, 10),
    ("molora", 4, 5, 1, 16.0, (3, 4), 9, 20),
    ("molora_sd", 4, 3, 1, None, (5,), 12, 7),
    ("molora_sd", 8, 4, 1, 2.0, (2, 3), 16, 10),
    ("mode", 4, 3, 1, None, (2, 3), 16, 10),
    ("mode", 4, 6, 2, 7.0, (3, 4), 9, 20),
    ("mode", 4, 4, 4, None, (5,), 12, 7),
    ("mode", 6, 5, 1, 12.0, (2, 3), 16, 10),
    ("mode", 6, 2, 3, 0.5, (3, 4), 9, 20),
    ("mode", 6, 3, 6, 2.0, (2, 2, 3), 12, 7),
]


def _assign_random(module, seed):
  """Fills every parameter with N(0, 1) values scaled to an O(1) delta."""
  rng = np.random.default_rng(seed)
  for name, std in (("lora_a", 0.3), ("lora_b", 0.5), ("router", 0.7)):
    if hasattr(module, name):
      v = getattr(module, name)
      v[...] = jnp.asarray(std * rng.normal(size=v.shape), jnp.float32)


@pytest.mark.parametrize("kind,r,e,p,alpha,lead,P,Q", CASES)
def test_matches_numpy_reference(kind, r, e, p, alpha, lead, P, Q):
  # Zero init (cheap), then every array assigned from NumPy.
  cfg = adapters.AdapterConfig(kind=kind, rank=r, num_experts=e, expert_rank=p, alpha=alpha,
                               a_init_scale=0.0, router_init_scale=0.0)
  module = adapters.make_adapter(cfg, P, Q, nnx.Rngs(0))
  _assign_random(module, seed=r * 100 + e * 10 + p)
  x = np.random.default_rng(P + Q).normal(size=(*lead, P)).astype(np.float32)
  dy = _call(module, jnp.asarray(x))
  assert dy.shape == (*lead, Q) and dy.dtype == jnp.float32
  want = reference(kind, module, x, cfg)
  assert np.abs(want).max() > 0.1  # a meaningful, non-degenerate delta
  np.testing.assert_allclose(np.asarray(dy), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,p", [("lora", 1), ("molora", 1), ("molora_sd", 1),
                                    ("mode", 1), ("mode", 2)])
def test_reference_with_random_init(kind, p):
  """lora_b drawn by the initialiser (b_init_scale > 0), alpha != R."""
  e = 1 if kind == "lora" else 3
  cfg = adapters.AdapterConfig(kind=kind, rank=4, num_experts=e, expert_rank=p, alpha=6.0,
                               a_init_scale=0.3, b_init_scale=0.5, router_init_scale=0.7)
  module = adapters.make_adapter(cfg, 16, 10, nnx.Rngs(7))
  x = np.random.default_rng(2).normal(size=(2, 3, 16)).astype(np.float32)
  want = reference(kind, module, x, cfg)
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(np.asarray(_call(module, jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)


def test_reference_distinguishes_groups():
  """A MoDE with p=1 is not a MoLoRA-SD: the per-column routers matter."""
  cfg = adapters.AdapterConfig(kind="mode", rank=4, num_experts=3, a_init_scale=0.0,
                               router_init_scale=0.0)
  module = adapters.make_adapter(cfg, 12, 7, nnx.Rngs(0))
  _assign_random(module, seed=0)
  x = np.random.default_rng(1).normal(size=(6, 12)).astype(np.float32)
  arr = lambda v: np.asarray(v[...], np.float64)
  as_sd = ref_molora_sd(x.astype(np.float64), arr(module.lora_a), arr(module.lora_b),
                        arr(module.router)[:, 0, :], 1.0)
  assert np.abs(np.asarray(_call(module, jnp.asarray(x))) - as_sd).max() > 1e-3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind,r,e,p", [("lora", 4, 1, 1), ("molora", 4, 3, 1),
                                        ("molora_sd", 4, 3, 1), ("mode", 4, 3, 1),
                                        ("mode", 4, 3, 2), ("mode", 4, 3, 4)])
def test_identity_at_init(kind, r, e, p, dtype):
  """Default config (b_init_scale=0): the delta is exactly zero."""
  cfg = adapters.AdapterConfig(kind=kind, rank=r, num_experts=e, expert_rank=p, alpha=3.0)
  module = adapters.make_adapter(cfg, 12, 9, nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 12)), dtype)
  dy = _call(module, x)
  assert dy.shape == (2, 5, 9) and dy.dtype == dtype
  assert not np.any(np.asarray(dy, np.float32))
  # Adding it to a base output changes no bit.
  base = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 9)), dtype)
  assert np.array_equal(np.asarray(base + dy, np.float32), np.asarray(base, np.float32))
