"""Shared builders of the pretrained-weight tests (no tests here).

Tiny random Gemma 1 / Gemma 2 models from Hugging Face transformers (torch,
float32, eager attention), their safetensors export, and the same weights
in the official Flax/Orbax tree.
"""

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
import torch
import transformers

V, D, H, K, F = 256, 64, 4, 16, 128


def hf_model(gen: int, kv_heads: int, layers: int = 2, window: int = 4, seed: int = 0):
  """A tiny random HF Gemma (gen 1) or Gemma 2 with random (non-zero) norms."""
  torch.manual_seed(seed)
  common = dict(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=layers,
                num_attention_heads=H, num_key_value_heads=kv_heads, head_dim=K,
                attn_implementation="eager")
  if gen == 1:
    cfg = transformers.GemmaConfig(hidden_act="gelu_pytorch_tanh", **common)
    model = transformers.GemmaForCausalLM(cfg)
  else:
    cfg = transformers.Gemma2Config(
        hidden_activation="gelu_pytorch_tanh", sliding_window=window,
        query_pre_attn_scalar=32, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
        **common)
    model = transformers.Gemma2ForCausalLM(cfg)
  model = model.float().eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.normal_(0.0, 0.5)
      elif "proj" in name:
        p.normal_(0.0, 0.2)  # larger than the default init: logits that differ
  return model


def save_hf(model, path) -> str:
  model.save_pretrained(str(path), safe_serialization=True)
  return str(path)


def hf_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


def tokens(b: int = 2, l: int = 10, seed: int = 0) -> np.ndarray:
  """Token ids in [1, V) (the `gemma` package treats id 0 as padding)."""
  return np.random.RandomState(seed).randint(1, V, (b, l)).astype(np.int32)


def official_tree(model, *, gating_transposed: bool = True, flat: bool = False) -> dict:
  """The HF weights in the official layout, with the documented transposes.

  Args:
    model: an HF Gemma / Gemma 2 model.
    gating_transposed: gating_einsum as [2, F, D] (else [2, D, F]).
    flat: the released structure ({"transformer/layer_0/attn/q_einsum":
      {"w": ...}}) rather than the nested {"transformer": {"layer_0": ...}}.
  """
  sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  c = model.config
  h, n, k, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
  gemma2 = c.model_type == "gemma2"
  tree = {"embedder": {"input_embedding": sd["model.embed_tokens.weight"]},
          "final_norm": {"scale": sd["model.norm.weight"]}}
  for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    q = sd[p + "self_attn.q_proj.weight"].reshape(h, k, d).transpose(0, 2, 1)  # [H, D, K]
    kk = sd[p + "self_attn.k_proj.weight"].reshape(n, k, d).transpose(0, 2, 1)
    vv = sd[p + "self_attn.v_proj.weight"].reshape(n, k, d).transpose(0, 2, 1)
    attn = {"attn_vec_einsum": {"w": sd[p + "self_attn.o_proj.weight"].T.reshape(h, k, d)}}
    if n == h:
      attn["qkv_einsum"] = {"w": np.stack([q, kk, vv])}
    else:
      attn["q_einsum"] = {"w": q}
      attn["kv_einsum"] = {"w": np.stack([kk, vv])}
    gate, up = sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]  # [F, D]
    gating = np.stack([gate, up]) if gating_transposed else np.stack([gate.T, up.T])
    layer = {"attn": attn,
             "mlp": {"gating_einsum": {"w": gating},
                     "linear": {"w": sd[p + "mlp.down_proj.weight"].T}},
             "pre_attention_norm": {"scale": sd[p + "input_layernorm.weight"]}}
    if gemma2:
      layer["post_attention_norm"] = {"scale": sd[p + "post_attention_layernorm.weight"]}
      layer["pre_ffw_norm"] = {"scale": sd[p + "pre_feedforward_layernorm.weight"]}
      layer["post_ffw_norm"] = {"scale": sd[p + "post_feedforward_layernorm.weight"]}
    else:
      layer["pre_ffw_norm"] = {"scale": sd[p + "post_attention_layernorm.weight"]}
    tree[f"layer_{i}"] = layer
  if not flat:
    return {"transformer": tree}
  out = {}

  def walk(node, prefix):
    if all(isinstance(v, np.ndarray) for v in node.values()):
      out["transformer/" + prefix] = node
      return
    for key, sub in node.items():
      walk(sub, f"{prefix}/{key}" if prefix else key)

  walk(tree, "")
  return out


def save_orbax(tree: dict, path) -> str:
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(str(path), tree)
  return str(path)


def logits(model, toks) -> np.ndarray:
  """The mode_jax model's full forward pass, jitted (faster than eager on CPU)."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
  return np.asarray(fn(state, np.asarray(toks)))


def decode_logits(model, toks, prefill: int) -> np.ndarray:
  """Prefill `prefill` tokens, then one token per step, jitted; logits [B, L, V]."""
  graphdef, state = nnx.split(model)
  step = jax.jit(lambda s, t, c: nnx.merge(graphdef, s).decode(t, c))
  cache = model.init_cache(toks.shape[0], toks.shape[1] + 2)
  out, cache = step(state, toks[:, :prefill], cache)
  outs = [out]
  for i in range(prefill, toks.shape[1]):
    out, cache = step(state, toks[:, i:i + 1], cache)
    outs.append(out)
  return np.concatenate([np.asarray(o) for o in outs], 1)
