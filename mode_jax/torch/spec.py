"""The exported adapter files that `mode_jax.torch` reads (no torch, no JAX).

An export directory holds
  mode_jax_adapters.safetensors  "<HF module>.<tensor>" in mode_jax's layout:
                                 lora_a [P,R] or [E,P,R], lora_b [R,Q] or
                                 [E,R,Q], router [P,E] / [P,G,E] / [P,R],
                                 bias [R] (x @ W convention, P in, Q out)
  mode_jax_adapters.json         {"format", "version", "kind", "scale",
                                 "rank", "num_experts", "expert_rank",
                                 "top_k", "modules": {HF module: {"in_features",
                                 "out_features"}}, "adapter_config", "step"}

HF module names are those of a `transformers` Gemma / Gemma 2, e.g.
`model.layers.0.self_attn.q_proj`; their [out, in] Linear weights contract
the same flattened features (head-major H*K) as mode_jax's kernels, so the
adapter tensors need no reordering.
"""

from __future__ import annotations

import json
import os

FORMAT = "mode_jax.adapters"
VERSION = 1
DESCRIPTION = "mode_jax_adapters.json"
TENSORS = "mode_jax_adapters.safetensors"
# The tensors each kind needs at inference (FlyLoRA's `seed` is not: its
# frozen `lora_a` is stored itself).
KIND_TENSORS = {
    "lora": ("lora_a", "lora_b"),
    "molora": ("lora_a", "lora_b", "router"),
    "molora_sd": ("lora_a", "lora_b", "router"),
    "mode": ("lora_a", "lora_b", "router"),
    "flylora": ("lora_a", "lora_b", "bias"),
    "smora": ("lora_a", "lora_b", "router", "bias"),
}
_FIELDS = ("kind", "scale", "rank", "num_experts", "expert_rank", "top_k", "modules")


def read(path: str) -> dict:
  """The description in export directory `path`, validated.

  Raises:
    ValueError: naming the file and the missing or bad field.
  """
  fname = os.path.join(path, DESCRIPTION)
  if not os.path.isfile(fname):
    raise FileNotFoundError(f"{path!r} is not a mode_jax torch export: {DESCRIPTION} not found "
                            "(write one with `python -m mode_jax.export --format=torch`)")
  with open(fname) as f:
    desc = json.load(f)
  if desc.get("format") != FORMAT or desc.get("version") != VERSION:
    raise ValueError(f"{fname}: format {desc.get('format')!r} version {desc.get('version')!r}; "
                     f"expected {FORMAT!r} version {VERSION}")
  missing = [k for k in _FIELDS if k not in desc]
  if missing:
    raise ValueError(f"{fname}: missing field {missing[0]!r}")
  if desc["kind"] not in KIND_TENSORS:
    raise ValueError(f"{fname}: kind {desc['kind']!r}; allowed: {sorted(KIND_TENSORS)}")
  return desc


def tensor_name(module: str, name: str) -> str:
  """"model.layers.0.self_attn.q_proj.lora_a"."""
  return f"{module}.{name}"
