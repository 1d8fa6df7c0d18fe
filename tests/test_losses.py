"""Chunked cross-entropy equals the plain one, in value and in gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mode_jax import losses


def _inputs(b=3, l=10, d=8, v=37, seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  hidden = jax.random.normal(k[0], (b, l, d))
  emb = jax.random.normal(k[1], (v, d))
  targets = jax.random.randint(k[2], (b, l), 0, v)
  weights = (jax.random.uniform(k[3], (b, l)) > 0.3).astype(jnp.float32)
  return hidden, emb, targets, weights


def _project(emb, cap=None):
  def project(h):
    logits = jnp.einsum("bld,vd->blv", h, emb)
    return logits if cap is None else jnp.tanh(logits / cap) * cap
  return project


@pytest.mark.parametrize("chunk", [1, 3, 5, 9, 10, 0])  # 3, 9: padded; 10, 0: unchunked
@pytest.mark.parametrize("cap", [None, 5.0])
def test_chunked_equals_plain_values_and_gradients(chunk, cap):
  hidden, emb, targets, weights = _inputs()

  def plain(h, e):
    return losses.cross_entropy(_project(e, cap)(h), targets, weights)

  def chunked(h, e):
    return losses.chunked_cross_entropy(h, _project(e, cap), targets, weights, chunk)

  (m0, n0), (m1, n1) = plain(hidden, emb), jax.jit(chunked)(hidden, emb)
  np.testing.assert_allclose(m1, m0, rtol=1e-5)
  assert float(n1) == float(n0) == float(weights.sum())
  g0 = jax.grad(lambda h, e: plain(h, e)[0], argnums=(0, 1))(hidden, emb)
  g1 = jax.jit(jax.grad(lambda h, e: chunked(h, e)[0], argnums=(0, 1)))(hidden, emb)
  for a, b in zip(g1, g0):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chunked_never_holds_the_whole_logits():
  """The compiled chunked loss has no [B, L, V] array, the plain one does."""
  hidden, emb, targets, weights = _inputs(b=2, l=64, d=8, v=1000)
  grad = lambda fn: jax.jit(jax.grad(lambda h: fn(h)[0]))  # noqa: E731
  plain = grad(lambda h: losses.cross_entropy(_project(emb)(h), targets, weights))
  chunked = grad(lambda h: losses.chunked_cross_entropy(h, _project(emb), targets, weights, 8))
  whole = "f32[2,64,1000]"
  assert whole in plain.lower(hidden).compile().as_text()
  text = chunked.lower(hidden).compile().as_text()
  assert whole not in text and "f32[2,8,1000]" in text
