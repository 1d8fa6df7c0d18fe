"""Shared builders of the export tests (no tests here).

A tiny random HF Gemma 2 (softcaps, sliding window, GQA) or Gemma 1 (MQA)
saved as safetensors, loaded here with random non-zero adapters of any kind
(both the down and the up projections non-zero, routers spread out), and the
comparisons: full-sequence logits and greedy decoding with the KV cache.
"""

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

  Balancing biases get random values too, so that the exports must carry them.
  """
  acfg = dataclasses.replace(acfg, a_init_scale=0.3, b_init_scale=0.3, router_init_scale=1.0)
  model = models.from_pretrained(path, acfg, seed=seed)
  rng = np.random.RandomState(seed)
  for _, node in nnx.iter_graph(model):
    bias = getattr(node, "bias", None)
    if isinstance(bias, adapters.AdapterState):
      bias.set_value(jax.numpy.asarray(rng.normal(0, 0.1, bias.shape), bias.get_value().dtype))
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
