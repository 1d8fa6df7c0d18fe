"""Hugging Face safetensors -> mode_jax: logits equal HF's, sharded, converted."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from mode_jax import adapters
from mode_jax import checkpoints
from mode_jax import convert
from mode_jax import models
from mode_jax import sharding
from mode_jax.models import pretrained

import test_pretrained_lib as lib  # pylint: disable=g-bad-import-order

ATOL = 1e-4
CASES = {"gemma1_mqa": (1, 1), "gemma2_gqa": (2, 2)}


@pytest.fixture(scope="module", params=sorted(CASES))
def hf(request, tmp_path_factory):
  gen, kv = CASES[request.param]
  model = lib.hf_model(gen, kv)
  path = lib.save_hf(model, tmp_path_factory.mktemp(request.param))
  return model, path


def test_logits_match_hf(hf):
  model, path = hf
  toks = lib.tokens()
  ours = models.from_pretrained(path)
  np.testing.assert_allclose(lib.logits(ours, toks), lib.hf_logits(model, toks),
                             atol=ATOL, rtol=0)


def test_cached_decoding_matches_hf(hf):
  model, path = hf
  toks = lib.tokens(b=2, l=10, seed=1)
  ref = lib.hf_logits(model, toks)
  ours = models.from_pretrained(path)
  np.testing.assert_allclose(lib.decode_logits(ours, toks, prefill=4), ref, atol=ATOL, rtol=0)


def test_inferred_config(hf):
  model, path = hf
  cfg = pretrained.read_config(path)
  c = model.config
  assert (cfg.vocab_size, cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads,
          cfg.head_dim, cfg.mlp_dim) == (c.vocab_size, c.num_hidden_layers, c.hidden_size,
                                         c.num_attention_heads, c.num_key_value_heads,
                                         c.head_dim, c.intermediate_size)
  assert cfg.param_dtype == cfg.dtype == "float32"
  if c.model_type == "gemma2":
    assert cfg.attention_types == ("local", "global") and cfg.sliding_window == 4
    assert (cfg.attn_logit_softcap, cfg.final_logit_softcap) == (5.0, 3.0)
    assert cfg.query_pre_attn_scalar == 32 and cfg.post_norms
  else:
    assert not cfg.post_norms and cfg.final_logit_softcap is None


def test_sharded_load_equals_unsharded(hf):
  model, path = hf
  toks = jnp.asarray(lib.tokens(b=4, l=8))
  mesh = sharding.make_mesh(data=2, model=4)
  ours = models.from_pretrained(path, mesh=mesh)
  emb = ours.embedder.input_embedding[...]
  assert emb.addressable_shards[0].data.shape == (lib.V // 4, lib.D)
  assert ours.layers[0].mlp.gate.kernel[...].addressable_shards[0].data.shape == (
      lib.D, lib.F // 4)
  graphdef, state = nnx.split(ours)
  with sharding.use_mesh(mesh):
    sharded = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, toks)
  plain = lib.logits(models.from_pretrained(path), toks)
  np.testing.assert_allclose(np.asarray(sharded), plain, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(sharded), lib.hf_logits(model, toks), atol=ATOL, rtol=0)


def test_fresh_adapters_are_sharded_and_identity(hf):
  _, path = hf
  acfg = adapters.AdapterConfig(kind="lora", rank=2, targets=("q", "gate"))
  mesh = sharding.make_mesh(data=2, model=4)
  adapted = models.from_pretrained(path, acfg, mesh=mesh, seed=3)
  leaves = jax.tree.leaves(nnx.state(adapted))
  assert leaves and all(isinstance(x, jax.Array) for x in leaves)
  lora_a = adapted.layers[0].mlp.gate.adapter.lora_a[...]
  assert lora_a.sharding.mesh.shape == mesh.shape and np.abs(np.asarray(lora_a)).max() > 0
  toks = lib.tokens()
  base = models.from_pretrained(path)
  np.testing.assert_allclose(lib.logits(adapted, toks), lib.logits(base, toks), atol=1e-6)


def test_convert_writes_a_base_checkpoint(hf, tmp_path):
  model, path = hf
  with open(os.path.join(path, "tokenizer.model"), "wb") as f:
    f.write(b"sentencepiece stand-in")
  dst = str(tmp_path / "base")
  convert.main([path, dst, "--data", "8"])
  assert checkpoints.is_base_checkpoint(dst)
  assert pretrained.detect_layout(dst) == pretrained.BASE
  assert pretrained.tokenizer_path(dst) == os.path.join(dst, "tokenizer.model")
  assert pretrained.tokenizer_path(path) == os.path.join(path, "tokenizer.model")
  cfg = checkpoints.read_base_config(dst)
  assert cfg == pretrained.read_config(path)
  toks = lib.tokens()
  # BASE_CHECKPOINT's path: restore_base into an abstract model.
  restored = models.abstract_model(cfg)
  checkpoints.restore_base(dst, restored)
  np.testing.assert_allclose(lib.logits(restored, toks), lib.hf_logits(model, toks),
                             atol=ATOL, rtol=0)
  acfg = adapters.AdapterConfig(kind="lora", rank=2)
  loaded = models.from_pretrained(dst, acfg, mesh=sharding.make_mesh(data=2, model=4),
                                  model=cfg.replace(name="mine", param_dtype="bfloat16"))
  with pytest.raises(pretrained.PretrainedError, match="holds model .* requested model"):
    models.from_pretrained(dst, model=cfg.replace(num_layers=3))
  # The requested param_dtype holds the base in bfloat16 (the float32 store is
  # cast), so the logits agree to bfloat16 rounding, not to float32's ATOL.
  base_dtypes = {v.dtype for v in jax.tree.leaves(
      nnx.state(loaded, adapters.FROZEN_BASE))}
  assert base_dtypes == {jax.numpy.dtype("bfloat16")}
  np.testing.assert_allclose(lib.logits(loaded, toks), lib.hf_logits(model, toks),
                             atol=3e-2, rtol=0)


def _edit(src, dst, fn):
  os.makedirs(dst)
  for name in ("config.json",):
    with open(os.path.join(src, name)) as f, open(os.path.join(dst, name), "w") as g:
      g.write(f.read())
  tensors = fn(load_file(os.path.join(src, "model.safetensors")))
  save_file(tensors, os.path.join(dst, "model.safetensors"))
  return str(dst)


def test_errors_name_the_tensor(tmp_path):
  src = lib.save_hf(lib.hf_model(1, 1), tmp_path / "src")
  name = "model.layers.1.self_attn.k_proj.weight"

  def drop(t):
    del t[name]
    return t

  with pytest.raises(pretrained.PretrainedError, match=f"lacks tensor '{name}'"):
    models.from_pretrained(_edit(src, tmp_path / "missing", drop))
  with pytest.raises(pretrained.PretrainedError,
                     match=r"unexpected tensor 'model.layers.0.mlp.extra.weight'"):
    models.from_pretrained(_edit(src, tmp_path / "extra", lambda t: {
        **t, "model.layers.0.mlp.extra.weight": np.zeros((2, 2), np.float32)}))
  with pytest.raises(pretrained.PretrainedError,
                     match=rf"'{name}' has shape \(8, 64\), expected \(16, 64\)"):
    models.from_pretrained(_edit(src, tmp_path / "shape", lambda t: {
        **t, name: np.zeros((8, 64), np.float32)}))
  with pytest.raises(pretrained.PretrainedError, match=r"\(256, 64\), expected \(512, 64\).*"
                     "vocabulary has 256 entries"):
    models.from_pretrained(src, model=pretrained.read_config(src).replace(vocab_size=512))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(pretrained.PretrainedError,
                     match=r"cannot tell the checkpoint layout of .*empty.*config.json"):
    models.from_pretrained(str(tmp_path / "empty"))


def test_gemma_2b_config_inference_and_counts(tmp_path):
  hf_2b = {"model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048,
           "intermediate_size": 16384, "num_hidden_layers": 18, "num_attention_heads": 8,
           "num_key_value_heads": 1, "head_dim": 256, "hidden_act": "gelu",
           "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6,
           "rope_theta": 10000.0, "torch_dtype": "bfloat16"}
  d = tmp_path / "hf2b"
  os.makedirs(d)
  (d / "config.json").write_text(json.dumps(hf_2b))
  cfg = models.get_config("gemma_2b")
  inferred = pretrained.hf_layout.read_config(str(d), param_dtype="bfloat16")
  # HF's embedding has 256,000 rows; the official release pads it to 256,128.
  # ... which is the registered gemma_2b_hf, so the inferred config takes its name.
  assert inferred == cfg.replace(vocab_size=256_000, dtype="bfloat16",
                                 param_dtype="bfloat16", name="gemma_2b_hf")
  assert (inferred.embed_dim, inferred.mlp_dim, inferred.num_kv_heads) == (2048, 16384, 1)
  assert models.get_config("gemma_2b_hf") == inferred.replace(
      name="gemma_2b_hf", dtype="float32", param_dtype="float32")
  # A converted checkpoint's metadata: read back and built abstractly.
  meta = tmp_path / "base"
  os.makedirs(meta)
  import dataclasses  # pylint: disable=g-import-not-at-top
  (meta / checkpoints.BASE_METADATA).write_text(json.dumps(
      {"config": dataclasses.asdict(cfg), "source": "test"}))
  counts = models.param_counts(models.abstract_model(checkpoints.read_base_config(str(meta))))
  assert counts["non_embedding"] == 1_981_884_416
  assert counts["embedding"] == 524_550_144


def test_bfloat16_safetensors_load_exactly(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  model = lib.hf_model(2, 2).to(torch.bfloat16)
  path = lib.save_hf(model, tmp_path / "bf16")
  ours = models.from_pretrained(path)
  assert ours.config.param_dtype == ours.config.dtype == "bfloat16"
  sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
  np.testing.assert_array_equal(
      np.asarray(ours.embedder.input_embedding[...], np.float32),
      sd["model.embed_tokens.weight"])
  q = sd["model.layers.1.self_attn.q_proj.weight"]  # [H*K, D]
  np.testing.assert_array_equal(np.asarray(ours.layers[1].attn.q.kernel[...], np.float32),
                                q.T.reshape(lib.D, lib.H, lib.K))
  np.testing.assert_array_equal(np.asarray(ours.layers[1].post_ffw_norm.scale[...], np.float32),
                                sd["model.layers.1.post_feedforward_layernorm.weight"])


def test_scanned_model_loads_every_layout(hf, tmp_path):
  """HF safetensors and a mode_jax base checkpoint (written by a scanned model,
  stored looped) load into scanned layers, sharded, with HF's logits and cache."""
  model, path = hf
  toks = lib.tokens(b=2, l=10, seed=1)
  ref = lib.hf_logits(model, toks)
  cfg = pretrained.read_config(path).replace(scan_layers=True)
  mesh = sharding.make_mesh(data=2, model=4)
  ours = models.from_pretrained(path, mesh=mesh, model=cfg)
  assert ours.layers.attn.q.kernel.shape[0] == cfg.num_layers  # stacked
  np.testing.assert_allclose(lib.logits(ours, toks), ref, atol=ATOL, rtol=0)
  np.testing.assert_allclose(lib.decode_logits(ours, toks, prefill=4), ref, atol=ATOL, rtol=0)
  checkpoints.save_base(str(tmp_path / "base"), ours)
  looped = models.from_pretrained(str(tmp_path / "base"))
  assert not looped.config.scan_layers and len(looped.layers) == cfg.num_layers
  np.testing.assert_allclose(lib.logits(looped, toks), ref, atol=ATOL, rtol=0)
  again = models.from_pretrained(str(tmp_path / "base"), model=cfg)
  np.testing.assert_allclose(lib.logits(again, toks), ref, atol=ATOL, rtol=0)
