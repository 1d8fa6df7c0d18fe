"""Shared builders of the export tests (no tests here).

A tiny random HF Gemma 2 (softcaps, sliding window, GQA) or Gemma 1 (MQA)
saved as safetensors, loaded here with random non-zero adapters of any kind
(both the down and the up projections non-zero, routers spread out), and the
comparisons: full-sequence logits and greedy decoding with the KV cache.
"""

import copy
import dataclasses
import os
import sys

import jax
import numpy as np
import torch
import transformers
from flax import nnx

from mode_jax import adapters
from mode_jax import decoding
from mode_jax import models

# The tiny random HF Gemma builders of the parity tests (tests/models).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "models"))
import test_pretrained_lib as lib  # pylint: disable=g-bad-import-order,wrong-import-position

ATOL = 1e-4
ALL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
EOS = 1


def hf_base(tmp_path_factory, gen: int = 2, kv: int = 2, name: str = "hf") -> str:
  return lib.save_hf(lib.hf_model(gen, kv), tmp_path_factory.mktemp(name))


def adapted(path: str, acfg: adapters.AdapterConfig, seed: int = 1):
  """The HF base with `acfg` adapters, every adapter tensor random and non-zero.

  The adapters are drawn with NumPy (compiling the model's random init costs
  ~8 s of CPU per kind): lora_a / lora_b N(0, 0.15^2) (FlyLoRA's frozen lora_a
  sparse, N(0, 1/R^2)), routers N(0, 1), balancing biases N(0, 0.1^2), so
  that the exports must carry all of them.
  """
  acfg = dataclasses.replace(acfg, a_init_scale=0.3, b_init_scale=0.3, router_init_scale=1.0)
  plain = models.from_pretrained(path)
  model = models.abstract_model(plain.config, acfg)
  rng = np.random.RandomState(seed)

  def draw(key_path, sds):
    name = str(getattr(key_path[-1], "key", key_path[-1]))
    if name == "seed":
      return np.zeros(sds.shape, sds.dtype)
    std = {"lora_a": 0.15, "lora_b": 0.15, "router": 1.0, "bias": 0.1}[name]
    x = rng.normal(0.0, std, sds.shape)
    if name == "lora_a" and acfg.kind == "flylora":
      x = rng.normal(0.0, 1.0 / acfg.rank, sds.shape) * (rng.rand(*sds.shape) < 0.4)
    return jax.numpy.asarray(x, sds.dtype)

  astate = nnx.state(model, adapters.ADAPTER)
  nnx.replace_by_pure_dict(astate, jax.tree_util.tree_map_with_path(
      draw, nnx.to_pure_dict(astate)))
  nnx.update(model, nnx.state(plain, adapters.FROZEN_BASE), astate)
  return model, acfg


def hf_from(path: str):
  return transformers.AutoModelForCausalLM.from_pretrained(
      path, attn_implementation="eager", dtype=torch.float32).eval()


def torch_logits(model, toks) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(np.asarray(toks), dtype=torch.long)).logits.float().numpy()


def our_greedy(model, toks, steps: int) -> np.ndarray:
  """Greedy ids [B, steps] from mode_jax's cached decoding (EOS, then padding 0)."""
  graphdef, state = nnx.split(model)
  fn = decoding.make_decode_fn(graphdef, steps, EOS)
  return np.asarray(fn((state,), np.asarray(toks), np.ones(toks.shape, bool)))


def hf_generate(model, toks, steps: int) -> np.ndarray:
  """Prompt + `steps` greedy tokens from `generate` with the KV cache, no EOS stop."""
  config = copy.deepcopy(model.generation_config)
  config.eos_token_id = None
  with torch.no_grad():
    out = model.generate(torch.tensor(np.asarray(toks), dtype=torch.long), do_sample=False,
                         max_new_tokens=steps, use_cache=True, pad_token_id=0,
                         generation_config=config).numpy()
  assert out.shape == (toks.shape[0], toks.shape[1] + steps), out.shape
  return out


def hf_greedy(model, toks, steps: int) -> np.ndarray:
  """Greedy ids from `generate` with the KV cache, in our_greedy's form."""
  with torch.no_grad():
    out = model.generate(torch.tensor(np.asarray(toks), dtype=torch.long), do_sample=False,
                         max_new_tokens=steps, use_cache=True, eos_token_id=EOS,
                         pad_token_id=0).numpy()[:, toks.shape[1]:]
  return np.pad(out, ((0, 0), (0, steps - out.shape[1])))


def logits(model, toks) -> np.ndarray:
  return lib.logits(model, toks)


tokens = lib.tokens
