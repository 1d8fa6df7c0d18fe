"""Adapters and merged weights out to the Hugging Face ecosystem.

Three writers, all from a mode_jax model with its adapters loaded:
  write_peft    adapter_config.json + adapter_model.safetensors: a PEFT LoRA
                for `peft.PeftModel.from_pretrained` on the HF Gemma;
  write_merged  a complete HF checkpoint (config.json, safetensors shards,
                tokenizer files when known) with the deltas folded in;
  write_torch   every kind's tensors + a JSON description, read by
                `mode_jax.torch.attach` (routed kinds have no PEFT type).
PEFT and merged need a delta that is linear in x (LoRA, and the kinds that
reduce to it: one expert, or FlyLoRA with k = R).

Layouts: mode_jax's adapter contracts the flattened kernel input (P = D, or
H*K head-major for `o`) and returns the flattened output (Q), exactly the
[out, in] features of HF's Linear (hf_layout), so PEFT's lora_A.weight is
lora_a.T [R, P] and lora_B.weight is lora_b.T [Q, R]; the scale alpha / R
becomes lora_alpha = s * R. Legend: P in, Q out, R rank, V vocab.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os

import jax
import numpy as np
import safetensors.numpy
from etils import epath
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import files
from mode_jax.layers import linear
from mode_jax.models import config as config_lib
from mode_jax.models import hf_layout
from mode_jax.models import pretrained
from mode_jax.torch import spec

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# An orbax export (`python -m mode_jax.export`): the manifest and the adapters' checkpoint.
MANIFEST, ADAPTERS = "manifest.json", "adapters"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json")
# The official release pads Gemma's 256,000-token vocabulary to 256,128 rows;
# HF's Gemma (and its tokenizer) has the 256,000: a merged export drops the padding.
OFFICIAL_VOCAB, HF_VOCAB = 256_128, 256_000
MAX_SHARD_BYTES = 5 * 2**30


def hf_modules(cfg: config_lib.ModelConfig) -> dict[str, str]:
  """mode_jax projection path ("layers/0/attn/q") -> HF module ("model.layers.0.self_attn.q_proj")."""
  return {r.target.removesuffix("/kernel"): r.source.removesuffix(".weight")
          for r in hf_layout.rules(cfg) if r.target.endswith("/kernel")}


def _host(x) -> np.ndarray:
  """A (sharded, possibly multi-process) array as one host array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def adapter_tensors(model: nnx.Module) -> dict[str, dict[str, np.ndarray]]:
  """Projection path -> {tensor name: host array} of every adapter, by METHODS.md name."""
  out = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, linear.Projection) and node.adapter is not None:
      out["/".join(map(str, path))] = {
          "/".join(map(str, p)): _host(v.get_value())
          for p, v in nnx.state(node.adapter, adapters_lib.ADAPTER).flat_state()}
  return out


def linear_lora(acfg: adapters_lib.AdapterConfig,
                arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
  """(A [P, R], B [R, Q]) with delta = acfg.scale * x @ A @ B, or None if routed.

  One expert makes the softmax 1 (MoLoRA, MoLoRA-SD and MoDE are LoRA with
  lora_a[0] / lora_b[0]); FlyLoRA with k = R keeps every column.
  """
  if not is_linear(acfg):
    return None
  a, b = arrays["lora_a"], arrays["lora_b"]
  if acfg.kind in ("molora", "molora_sd", "mode"):  # one expert
    return (a[0] if a.ndim == 3 else a), b[0]
  return a, b


def is_linear(acfg: adapters_lib.AdapterConfig) -> bool:
  """Whether `linear_lora` applies: the kind's delta is a fixed matrix."""
  return (acfg.kind == "lora" or (acfg.kind == "flylora" and acfg.top_k == acfg.rank)
          or (acfg.kind in ("molora", "molora_sd", "mode") and acfg.num_experts == 1))


def _linear_loras(by_path: dict, acfg) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Projection path -> linear_lora(...) of every adapter; raises if any is routed."""
  check_linear(acfg)
  return {path: linear_lora(acfg, arrays) for path, arrays in by_path.items()}


def check_linear(acfg: adapters_lib.AdapterConfig) -> None:
  """Raises a ValueError naming the kind unless `is_linear(acfg)`."""
  if not is_linear(acfg):
    raise ValueError(
        f"adapter kind {acfg.kind!r} (num_experts={acfg.num_experts}, top_k={acfg.top_k}) "
        "routes each token, so its delta is no fixed matrix: PEFT and merged weights need "
        "LoRA (or one expert); use --format=torch")


def hf_config(cfg: config_lib.ModelConfig, vocab_size: int, source: dict | None = None) -> dict:
  """The HF config.json of `cfg` (Gemma, or Gemma 2 with post-norms), over `source`.

  Raises:
    ValueError: a feature HF's Gemma class cannot express, naming the field.
  """
  types = tuple(cfg.layer_attention_type(i) for i in range(cfg.num_layers))
  gemma2 = cfg.post_norms
  if not gemma2:
    bad = {"attn_logit_softcap": cfg.attn_logit_softcap,
           "final_logit_softcap": cfg.final_logit_softcap,
           "attention_types": "local" if "local" in types else None}
    if cfg.query_pre_attn_scalar not in (None, cfg.head_dim):
      bad["query_pre_attn_scalar"] = cfg.query_pre_attn_scalar
    bad = {k: v for k, v in bad.items() if v is not None}
    if bad:
      field = next(iter(bad))
      raise ValueError(f"ModelConfig {cfg.name!r}: {field}={bad[field]!r} has no HF Gemma 1 "
                       "equivalent (HF Gemma 2 needs post_norms=True)")
  elif "local" in types and cfg.sliding_window is None:
    raise ValueError(f"ModelConfig {cfg.name!r}: local attention layers need sliding_window")
  act = "gelu_pytorch_tanh"
  out = dict(source or {})
  for stale in ("rope_scaling", "rope_parameters", "torch_dtype", "transformers_version"):
    out.pop(stale, None)
  out.update(
      architectures=["Gemma2ForCausalLM" if gemma2 else "GemmaForCausalLM"],
      model_type="gemma2" if gemma2 else "gemma", vocab_size=vocab_size,
      hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, hidden_act=act,
      hidden_activation=act, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_base,
      tie_word_embeddings=True, attention_bias=False, dtype=cfg.param_dtype)
  for k, v in dict(max_position_embeddings=8192, bos_token_id=2, eos_token_id=1,
                   pad_token_id=0).items():
    out.setdefault(k, v)
  if gemma2:
    kinds = {"local": "sliding_attention", "global": "full_attention"}
    out.update(query_pre_attn_scalar=cfg.query_pre_attn_scalar or cfg.head_dim,
               attn_logit_softcapping=cfg.attn_logit_softcap,
               final_logit_softcapping=cfg.final_logit_softcap,
               sliding_window=cfg.sliding_window, layer_types=[kinds[t] for t in types])
  return out


def _write_json(path: str, obj: dict) -> None:
  files.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _save(tensors: dict[str, np.ndarray], path: str) -> None:
  """One safetensors file, local or gs:// (the bytes of one file in host memory)."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_bytes(safetensors.numpy.save(tensors, metadata={"format": "pt"}))


def write_peft(model: nnx.Module, acfg: adapters_lib.AdapterConfig, out_dir: str,
               base_name: str | None = None) -> list[str]:
  """Writes the PEFT LoRA of `model`'s adapters; returns the files written."""
  cfg = model.config
  names = hf_modules(cfg)
  pairs = _linear_loras(adapter_tensors(model), acfg)
  tensors = {}
  for path, (a_pr, b_rq) in pairs.items():
    tensors[f"{PEFT_PREFIX}{names[path]}.lora_A.weight"] = np.ascontiguousarray(a_pr.T)
    tensors[f"{PEFT_PREFIX}{names[path]}.lora_B.weight"] = np.ascontiguousarray(b_rq.T)
  rank = next(iter(pairs.values()))[0].shape[1]
  alpha = acfg.scale * rank
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
      "r": rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
      "target_modules": sorted({names[p].rsplit(".", 1)[-1] for p in pairs}),
      "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
      "use_dora": False, "inference_mode": True, "modules_to_save": None,
      "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
      "rank_pattern": {}, "alpha_pattern": {}}
  if jax.process_index() == 0:
    _save(tensors, files.join(out_dir, PEFT_WEIGHTS))
    _write_json(files.join(out_dir, PEFT_CONFIG), config)
  return [PEFT_CONFIG, PEFT_WEIGHTS]


def _source_hf_dir(base_checkpoint: str | None) -> str | None:
  """The HF directory a base came from: itself, or the converted base's source."""
  if not base_checkpoint:
    return None
  if hf_layout.detect(base_checkpoint):
    return base_checkpoint
  if checkpoints.is_base_checkpoint(base_checkpoint):
    with open(os.path.join(base_checkpoint, checkpoints.BASE_METADATA)) as f:
      kind, _, src = json.load(f).get("source", "").partition(":")
    if kind == pretrained.HF and os.path.isdir(src):
      return src
  return None


def _tokenizer_files(base_checkpoint: str | None) -> dict[str, str]:
  """File name -> path of the known tokenizer files of the base."""
  dirs = [d for d in (base_checkpoint, _source_hf_dir(base_checkpoint)) if d]
  tok = pretrained.tokenizer_path(base_checkpoint) if base_checkpoint else None
  dirs += [os.path.dirname(tok)] if tok else []
  found = {}
  for d in dirs:
    for name in TOKENIZER_FILES:
      if name not in found and os.path.isfile(os.path.join(d, name)):
        found[name] = os.path.join(d, name)
  return found


def _from_target(rule, x: np.ndarray) -> np.ndarray:
  """Inverse of `rule.apply`: a mode_jax parameter back to the HF tensor's layout."""
  if rule.axes:
    x = x.transpose(rule.axes)
  return x.reshape(rule.shape)


def merged_tensors(model: nnx.Module, acfg: adapters_lib.AdapterConfig | None,
                   vocab_size: int):
  """Yields (HF tensor name, array in the base dtype) with W + s A B folded in."""
  cfg = model.config
  deltas = _linear_loras(adapter_tensors(model), acfg) if acfg is not None else {}
  base = {"/".join(map(str, p)): v for p, v in
          nnx.state(model, adapters_lib.FROZEN_BASE).flat_state()}
  for rule in hf_layout.rules(cfg):
    x = _host(base[rule.target].get_value())
    dtype = x.dtype
    proj = rule.target.removesuffix("/kernel")
    if proj in deltas:
      a_pr, b_rq = deltas[proj]
      delta = acfg.scale * (a_pr.astype(np.float32) @ b_rq.astype(np.float32))
      x = (x.astype(np.float32) + delta.reshape(x.shape)).astype(dtype)
    x = _from_target(rule, x)
    if rule.target == "embedder/input_embedding":
      x = x[:vocab_size]
    yield rule.source, np.ascontiguousarray(x)


def write_merged(model: nnx.Module, acfg: adapters_lib.AdapterConfig | None, out_dir: str,
                 base_checkpoint: str | None = None,
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
  """Writes a complete HF checkpoint of base + folded deltas; returns the files."""
  cfg = model.config
  vocab = HF_VOCAB if cfg.vocab_size == OFFICIAL_VOCAB else cfg.vocab_size
  src = _source_hf_dir(base_checkpoint)
  source_config = None
  if src:
    with open(os.path.join(src, hf_layout.CONFIG)) as f:
      source_config = json.load(f)
  config = hf_config(cfg, vocab, source_config)
  writer = jax.process_index() == 0
  # Each shard is written as soon as it is full: the host holds one shard.
  # HF finds shards through the index, whatever their names; a single file
  # must be model.safetensors (renamed at the end).
  shards: list[list[str]] = []
  current, size, total = {}, 0, 0
  for name, x in itertools.chain(merged_tensors(model, acfg, vocab), [(None, None)]):
    if current and (name is None or size + x.nbytes > max_shard_bytes):
      if writer:
        _save(current, files.join(out_dir, f"model-{len(shards) + 1:05d}.safetensors"))
      shards.append(list(current))
      current, size = {}, 0
    if name is not None:
      current[name] = x
      size += x.nbytes
      total += x.nbytes
  n = len(shards)
  fnames = [f"model-{i + 1:05d}.safetensors" for i in range(n)]
  if n == 1:
    if writer:
      epath.Path(files.join(out_dir, fnames[0])).rename(files.join(out_dir, "model.safetensors"))
    fnames = ["model.safetensors"]
  elif writer:
    _write_json(files.join(out_dir, "model.safetensors.index.json"),
                {"metadata": {"total_size": total},
                 "weight_map": {t: f for f, names in zip(fnames, shards) for t in names}})
  tokenizer = _tokenizer_files(base_checkpoint)
  if writer:
    for name, path in tokenizer.items():
      epath.Path(files.join(out_dir, name)).write_bytes(epath.Path(path).read_bytes())
    # config.json last: with *.safetensors it marks a loadable checkpoint (hf_layout.detect).
    _write_json(files.join(out_dir, hf_layout.CONFIG), config)
  return ([hf_layout.CONFIG] + fnames + ["model.safetensors.index.json"] * (n > 1)
          + list(tokenizer))


def write_torch(model: nnx.Module, acfg: adapters_lib.AdapterConfig, out_dir: str,
                step: int = 0) -> list[str]:
  """Writes every adapter's tensors and their description for `mode_jax.torch`."""
  cfg = model.config
  hf_config(cfg, cfg.vocab_size)  # the base must have an HF Gemma equivalent
  names = hf_modules(cfg)
  needed = spec.KIND_TENSORS[acfg.kind]
  tensors, modules = {}, {}
  for path, arrays in adapter_tensors(model).items():
    missing = [n for n in needed if n not in arrays]
    if missing:
      raise ValueError(f"adapter at {path!r} lacks tensor {missing[0]!r} (kind {acfg.kind!r} "
                       f"exports {needed}; found {sorted(arrays)})")
    node = names[path]
    for n in needed:
      tensors[spec.tensor_name(node, n)] = np.ascontiguousarray(arrays[n])
    b = arrays["lora_b"]
    modules[node] = {"in_features": int(arrays["lora_a"].shape[-2]),
                     "out_features": int(b.shape[-1])}
  desc = {"format": spec.FORMAT, "version": spec.VERSION, "kind": acfg.kind,
          "scale": acfg.scale, "rank": acfg.rank, "num_experts": acfg.num_experts,
          "expert_rank": acfg.expert_rank,
          "top_k": (acfg.top_k if acfg.kind in ("flylora", "smora") or acfg.sparse_experts
                    else None),
          "modules": modules, "adapter_config": dataclasses.asdict(acfg), "step": step}
  if jax.process_index() == 0:
    _save(tensors, files.join(out_dir, spec.TENSORS))
    _write_json(files.join(out_dir, spec.DESCRIPTION), desc)
  return [spec.DESCRIPTION, spec.TENSORS]
