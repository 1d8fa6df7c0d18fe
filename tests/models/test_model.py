"""The Gemma-family decoder: shapes, parameter counts, masks, KV cache."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import models

ALL_KINDS = [
    adapters.AdapterConfig(kind="lora", rank=4),
    adapters.AdapterConfig(kind="molora", rank=2, num_experts=3),
    adapters.AdapterConfig(kind="molora_sd", rank=2, num_experts=3),
    adapters.AdapterConfig(kind="mode", rank=4, num_experts=3, expert_rank=2,
                           targets=("q", "k", "v", "o", "gate", "up", "down")),
]


def _tokens(cfg, b=2, l=9, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, l), 0, cfg.vocab_size)


def test_gemma_2b_abstract_counts():
  model = models.abstract_model(models.get_config("gemma_2b"))
  counts = models.param_counts(model)
  assert counts["non_embedding"] == 1_981_884_416
  assert counts["embedding"] == 524_550_144
  leaves = jax.tree.leaves(nnx.state(model))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert model.layers[0].attn.k.kernel.shape == (2048, 1, 256)


def test_gemma_7b_abstract_counts():
  cfg = models.get_config("gemma_7b")
  counts = models.param_counts(models.abstract_model(cfg))
  per_layer = 4 * 3072 * 16 * 256 + 3 * 3072 * 24576 + 2 * 3072
  assert counts["non_embedding"] == 28 * per_layer + 3072 == 7_751_248_896
  assert counts["embedding"] == 256_128 * 3072
  assert counts["non_embedding"] == cfg.non_embedding_params()


def test_config_validation_names_field():
  with pytest.raises(ValueError, match="num_kv_heads"):
    models.get_config("tiny").replace(num_kv_heads=3)
  with pytest.raises(ValueError, match="unknown model config 'nope'"):
    models.get_config("nope")


@pytest.mark.parametrize("acfg", ALL_KINDS, ids=lambda c: c.kind)
def test_base_paths_unchanged_by_adapters(acfg):
  cfg = models.get_config("tiny")
  base = nnx.state(models.abstract_model(cfg), nnx.Param)
  adapted = nnx.state(models.abstract_model(cfg, acfg), adapters.FROZEN_BASE)
  base_paths = {p: v.shape for p, v in base.flat_state()}
  adapted_paths = {p: v.shape for p, v in adapted.flat_state()}
  assert base_paths == adapted_paths
  adapter_paths = [p for p, _ in nnx.state(models.abstract_model(cfg, acfg),
                                           adapters.TRAINABLE).flat_state()]
  assert adapter_paths and all("adapter" in p for p in adapter_paths)


@pytest.mark.parametrize("acfg", ALL_KINDS, ids=lambda c: c.kind)
def test_zero_lora_b_is_bit_identical_to_base(acfg):
  cfg = models.get_config("tiny")
  base = models.build_model(cfg, None, seed=3)
  adapted = models.build_model(cfg, acfg, seed=3)
  nnx.update(adapted, nnx.state(base, nnx.Param))  # same base weights
  toks = _tokens(cfg)
  np.testing.assert_array_equal(np.asarray(base(toks)), np.asarray(adapted(toks)))
  # ... and a non-zero lora_b does change the output.
  _set_lora_b(adapted, 0.05)
  assert not np.allclose(base(toks), adapted(toks))


def _set_lora_b(model, value):
  state = nnx.state(model, adapters.TRAINABLE)
  for path, var in state.flat_state():
    if path[-1] == "lora_b":
      var.set_value(value * jnp.ones(var.shape))
  nnx.update(model, state)


@pytest.mark.parametrize("name", ["tiny", "tiny_gqa"])
def test_kv_cache_matches_full_forward(name):
  cfg = models.get_config(name)
  model = models.build_model(cfg, ALL_KINDS[3], seed=1)
  _set_lora_b(model, 0.02)
  toks = _tokens(cfg, b=3, l=11)
  full = model(toks)
  cache = model.init_cache(3, 16)
  logits, cache = model.decode(toks[:, :5], cache)
  steps = [logits]
  for i in range(5, 11):
    logits, cache = model.decode(toks[:, i:i + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5, rtol=2e-5)
  assert int(cache["index"]) == 11


def test_kv_cache_left_padding_matches_unpadded():
  cfg = models.get_config("tiny")
  model = models.build_model(cfg, None, seed=2)
  toks = _tokens(cfg, b=1, l=6)
  ref = model(toks)
  pad = 3
  padded = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), toks], 1)
  mask = jnp.arange(pad + 6)[None] >= pad
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  cache = model.init_cache(1, 12)
  logits, _ = model.decode(padded, cache, positions, mask)
  np.testing.assert_allclose(logits[:, pad:], ref, atol=2e-5, rtol=2e-5)


def test_packed_segments_match_separate_sequences():
  cfg = models.get_config("tiny")
  model = models.build_model(cfg, None, seed=4)
  a, b = _tokens(cfg, 1, 5, seed=1), _tokens(cfg, 1, 4, seed=2)
  packed = jnp.concatenate([a, b], 1)
  seg = jnp.array([[1] * 5 + [2] * 4])
  pos = jnp.array([list(range(5)) + list(range(4))])
  out = model(packed, positions_bl=pos, segment_ids_bl=seg)
  np.testing.assert_allclose(out[:, :5], model(a), atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(out[:, 5:], model(b), atol=2e-5, rtol=2e-5)


def test_prefix_lm_mask_lets_prefix_see_itself():
  cfg = models.get_config("tiny")
  model = models.build_model(cfg, None, seed=5)
  toks = _tokens(cfg, 1, 6)
  prefix = jnp.array([[1, 1, 1, 0, 0, 0]])
  causal = model(toks)
  bidir = model(toks, bidirectional_mask_bl=prefix)
  assert not np.allclose(causal[:, 0], bidir[:, 0])  # token 0 now sees 1, 2
  # A change after the prefix does not reach the prefix or earlier targets.
  toks2 = toks.at[0, 5].set((toks[0, 5] + 1) % cfg.vocab_size)
  np.testing.assert_allclose(model(toks2, bidirectional_mask_bl=prefix)[:, :5],
                             bidir[:, :5], atol=1e-6)


def test_gemma2_features_run_and_cache_matches():
  cfg = models.get_config("tiny").replace(
      attention_types=("local", "global"), sliding_window=3, post_norms=True,
      attn_logit_softcap=50.0, final_logit_softcap=30.0, query_pre_attn_scalar=16)
  model = models.build_model(cfg, None, seed=6)
  toks = _tokens(cfg, 2, 8)
  full = model(toks)
  cache = model.init_cache(2, 8)
  steps = []
  for i in range(8):
    logits, cache = model.decode(toks[:, i:i + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5, rtol=2e-5)
  assert np.abs(full).max() <= 30.0


@pytest.mark.slow  # a subprocess
def test_importing_models_and_adapters_does_not_import_tensorflow():
  code = ("import sys, mode_jax.models, mode_jax.adapters, mode_jax.sharding; "
          "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio')]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_bfloat16_activations_track_float32():
  cfg = models.get_config("tiny")
  acfg = adapters.AdapterConfig(kind="mode", rank=4, num_experts=4, b_init_scale=0.05)
  f32 = models.build_model(cfg, acfg, seed=7)
  bf16 = models.build_model(cfg.replace(dtype="bfloat16"), acfg, seed=7)
  toks = _tokens(cfg)
  out32, out16 = f32(toks), bf16(toks)
  assert out16.dtype == jnp.float32  # logits are computed in float32
  assert bf16.layers[0].attn.q.kernel.get_value().dtype == jnp.float32  # params stay f32
  np.testing.assert_allclose(out16, out32, atol=0.15, rtol=0.05)
  p32 = jax.nn.softmax(out32, -1)
  p16 = jax.nn.softmax(out16, -1)
  assert float(jnp.abs(p32 - p16).sum(-1).max()) < 0.1
