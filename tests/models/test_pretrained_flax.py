"""The official Flax/Orbax layout -> mode_jax, against HF and the `gemma` package."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import models
from mode_jax import sharding
from mode_jax.models import flax_layout
from mode_jax.models import layout
from mode_jax.models import pretrained

import test_pretrained_lib as lib  # pylint: disable=g-bad-import-order

ATOL = 1e-4


@pytest.mark.parametrize("gen,kv,flat,gating_transposed", [
    (1, 1, False, True),   # nested {"transformer": ...}, MQA (kv_einsum)
    (1, 4, True, False),   # released flat keys, MHA (qkv_einsum), [2, D, F] gating
    (2, 2, True, True),    # Gemma 2, GQA
])
def test_official_layout_matches_hf(tmp_path, gen, kv, flat, gating_transposed):
  model = lib.hf_model(gen, kv)
  tree = lib.official_tree(model, flat=flat, gating_transposed=gating_transposed)
  path = lib.save_orbax(tree, tmp_path / "ckpt")
  assert pretrained.detect_layout(path) == pretrained.FLAX
  inferred = pretrained.read_config(path)
  # Gemma 2's fixed options come with the shapes; the tiny HF model's differ.
  cfg = pretrained.hf_layout.read_config(lib.save_hf(model, tmp_path / "hf"))
  if gen == 2:
    assert inferred.post_norms and inferred.sliding_window == 4096
    assert inferred.attn_logit_softcap == 50.0 and inferred.final_logit_softcap == 30.0
    inferred = inferred.replace(sliding_window=4, attn_logit_softcap=5.0,
                                final_logit_softcap=3.0, query_pre_attn_scalar=32)
  assert inferred == cfg
  toks = lib.tokens()
  mesh = sharding.make_mesh(data=2, model=4)
  ours = models.from_pretrained(path, mesh=mesh, model=cfg)
  np.testing.assert_allclose(lib.logits(ours, toks), lib.hf_logits(model, toks),
                             atol=ATOL, rtol=0)
  if not flat:  # the official tree into scanned layers, too
    scanned = models.from_pretrained(path, mesh=mesh, model=cfg.replace(scan_layers=True))
    np.testing.assert_allclose(lib.logits(scanned, toks), lib.logits(ours, toks),
                               atol=1e-5, rtol=1e-5)


def test_kaggle_directory_and_errors(tmp_path):
  model = lib.hf_model(1, 1)
  tree = lib.official_tree(model, flat=True)
  lib.save_orbax(tree, tmp_path / "kaggle" / "2b")
  (tmp_path / "kaggle" / "tokenizer.model").write_bytes(b"sp")
  root = str(tmp_path / "kaggle")
  assert pretrained.detect_layout(root) == pretrained.FLAX
  assert pretrained.tokenizer_path(os.path.join(root, "2b")) == os.path.join(
      root, "tokenizer.model")
  toks = lib.tokens()
  np.testing.assert_allclose(lib.logits(models.from_pretrained(root), toks),
                             lib.hf_logits(model, toks), atol=ATOL, rtol=0)

  bad = dict(tree)
  del bad["transformer/layer_1/attn/kv_einsum"]
  with pytest.raises(pretrained.PretrainedError,
                     match="lacks tensor 'transformer/layer_1/attn/kv_einsum/w'"):
    models.from_pretrained(lib.save_orbax(bad, tmp_path / "missing"),
                           model=pretrained.read_config(root))
  bad = dict(tree, **{"transformer/layer_0/attn/_key_norm": {"scale": np.ones(16, np.float32)}})
  with pytest.raises(pretrained.PretrainedError,
                     match="unexpected tensor 'transformer/layer_0/attn/_key_norm/scale'"):
    models.from_pretrained(lib.save_orbax(bad, tmp_path / "extra"))
  bad = dict(tree, **{"transformer/layer_0/attn/q_einsum": {"w": np.ones((4, 64, 8),
                                                                        np.float32)}})
  with pytest.raises(pretrained.PretrainedError,
                     match=r"'transformer/layer_0/attn/q_einsum/w' has shape \(4, 64, 8\), "
                           r"expected \(4, 64, 16\)"):
    models.from_pretrained(lib.save_orbax(bad, tmp_path / "shape"),
                           model=pretrained.read_config(root))


# --- Google DeepMind's `gemma` package as a second reference ----------------


def _gm():
  """Google DeepMind's `gemma` package (imported lazily: it takes seconds).

  gemma 3.3.0's `gm.ckpts` (which `gm.nn.Gemma2_2B` imports) subclasses
  `kd.ckpts.AbstractPartialLoader`, which kauldron 1.4 renamed
  `InitTransform`: without the alias below `from gemma import gm;
  gm.nn.Gemma2_2B` raises AttributeError every time, whatever the import
  order. `gemma.gm.nn._transformer` alone never needs it.
  """
  import kauldron.checkpoints as kd_ckpts  # pylint: disable=g-import-not-at-top
  if not hasattr(kd_ckpts, "AbstractPartialLoader"):
    kd_ckpts.AbstractPartialLoader = kd_ckpts.InitTransform
  from gemma import gm  # pylint: disable=g-import-not-at-top
  return gm


def test_gemma2_2b_tree_of_the_gemma_package_is_read_exactly():
  gm = _gm()
  from gemma.gm.ckpts import _checkpoint  # pylint: disable=g-import-not-at-top
  nested = jax.eval_shape(gm.nn.Gemma2_2B().init, jax.random.key(0),
                          jnp.ones((1, 4), jnp.int32))["params"]
  released = _checkpoint._nested_to_flat(nested)  # pylint: disable=protected-access
  assert "transformer/layer_0/mlp/gating_einsum" in released
  for tree in (nested, released, {"transformer": nested}):
    found, _ = flax_layout.flatten(tree)
    cfg = flax_layout.infer_config(found)
    assert (cfg.vocab_size, cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim, cfg.mlp_dim) == (256_128, 26, 2304, 8, 4, 256, 9216)
    assert cfg.param_dtype == "bfloat16" and cfg.post_norms
    assert cfg.replace(vocab_size=256_000, name="gemma2_2b", dtype="float32",
                       param_dtype="float32") == models.get_config("gemma2_2b")
    assert not flax_layout.is_gating_transposed(found, cfg.embed_dim)
    rules = flax_layout.rules(cfg, False)
    layout.check_tensors("gemma", "Gemma2_2B", rules, {n: s for n, (s, _) in found.items()})
    layout.check_targets(rules, {"/".join(map(str, p)): v for p, v in
                                 nnx.state(models.abstract_model(cfg)).flat_state()})


@pytest.mark.parametrize("gen", [1, 2])
def test_gemma_package_params_load_and_match(tmp_path, gen):
  gm = _gm()
  at = gm.nn.AttentionType
  common = dict(num_embed=lib.V, embed_dim=lib.D, hidden_dim=lib.F, num_heads=lib.H,
                head_dim=lib.K)
  if gen == 1:  # Gemma 1 7B-style: multi-head (qkv_einsum), [2, F, D] gating
    cfg = gm.nn.config.TransformerConfig(
        num_kv_heads=lib.H, final_logit_softcap=None, use_post_attn_norm=False,
        use_post_ffw_norm=False, attention_types=(at.GLOBAL,) * 2,
        transpose_gating_einsum=True, **common)
  else:  # Gemma 2 2B-style: GQA, local/global, soft-caps, post-norms
    cfg = gm.nn.config.TransformerConfig(
        num_kv_heads=2, final_logit_softcap=30.0, use_post_attn_norm=True,
        use_post_ffw_norm=True, attention_types=(at.LOCAL_SLIDING, at.GLOBAL) * 2,
        attn_logits_soft_cap=50.0, sliding_window_size=4, **common)
  gm_model = gm.nn.Transformer(config=cfg, dtype=jnp.float32)
  toks = jnp.asarray(lib.tokens(l=10))
  # The package's own parameter tree (shapes only: values are drawn below,
  # with random norms and larger weights so that every tensor matters).
  params = jax.eval_shape(gm_model.init, jax.random.key(0), toks)["params"]
  keys = iter(jax.random.split(jax.random.key(1), 200))
  params = jax.tree_util.tree_map_with_path(
      lambda kp, x: jax.random.normal(next(keys), x.shape) * (
          0.5 if "scale" in str(kp[-1]) else 1.0 if "embedding" in str(kp[-1]) else 0.2),
      params)
  assert set(params) == {"embedder", "final_norm"} | {f"layer_{i}" for i in range(
      cfg.num_layers)}
  path = lib.save_orbax(jax.tree.map(np.asarray, params), tmp_path / "gm")
  ref = np.asarray(gm_model.apply({"params": params}, toks).logits)

  inferred = pretrained.read_config(path)
  assert inferred.num_kv_heads == cfg.num_kv_heads and inferred.post_norms == (gen == 2)
  if gen == 2:  # the tiny window; everything else is Gemma 2's
    assert inferred.sliding_window == 4096
    inferred = inferred.replace(sliding_window=4)
  ours = models.from_pretrained(path, model=inferred)
  np.testing.assert_allclose(lib.logits(ours, toks), ref, atol=ATOL, rtol=0)
  assert flax_layout.canonical(("transformer/layer_0/mlp/gating_einsum", "w")) == (
      "layer_0/mlp/gating_einsum")
