"""The Hugging Face layout of Gemma 1 / Gemma 2: config.json + *.safetensors.

Tensor names and how each becomes a mode_jax parameter (torch Linear
weights are [out, in]):

  model.embed_tokens.weight                [V, D]      embedder/input_embedding
  model.layers.N.self_attn.q_proj.weight   [H*K, D]    attn/q/kernel [D, H, K]
  model.layers.N.self_attn.k_proj.weight   [N*K, D]    attn/k/kernel [D, N, K]
  model.layers.N.self_attn.v_proj.weight   [N*K, D]    attn/v/kernel [D, N, K]
  model.layers.N.self_attn.o_proj.weight   [D, H*K]    attn/o/kernel [H, K, D]
  model.layers.N.mlp.gate_proj.weight      [F, D]      mlp/gate/kernel [D, F]
  model.layers.N.mlp.up_proj.weight        [F, D]      mlp/up/kernel [D, F]
  model.layers.N.mlp.down_proj.weight      [D, F]      mlp/down/kernel [F, D]
  model.norm.weight                        [D]         final_norm/scale

Norms (HF stores Gemma's `scale`, applied as 1 + weight, unchanged):
  Gemma 1: input_layernorm -> pre_attention_norm,
           post_attention_layernorm -> pre_ffw_norm (sic: it precedes the MLP).
  Gemma 2: input_layernorm -> pre_attention_norm,
           post_attention_layernorm -> post_attention_norm,
           pre_feedforward_layernorm -> pre_ffw_norm,
           post_feedforward_layernorm -> post_ffw_norm.

Legend: V vocab, D embed, H query heads, N kv heads, K head dim, F mlp.
"""

from __future__ import annotations

import json
import warnings
from typing import Mapping

import jax
import ml_dtypes
import numpy as np

from mode_jax import files
from mode_jax.models import config as config_lib
from mode_jax.models import layout

CONFIG = "config.json"
MODEL_TYPES = ("gemma", "gemma2")
# Gemma is trained with the tanh approximation of GELU, which mode_jax uses.
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_tanh")
# Tied to the embedding in every Gemma; present in some exports.
_TIED = ("lm_head.weight",)
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "F64": np.float64}
_MAX_HEADER = 1 << 28


def _weight_files(path: str) -> list[str]:
  return files.glob(path, "*.safetensors")


def detect(path: str) -> bool:
  """A directory with config.json and at least one *.safetensors file."""
  return files.isfile(files.join(path, CONFIG)) and bool(_weight_files(path))


def _read_json(path: str) -> dict:
  return json.loads(files.read_text(files.join(path, CONFIG)))


class SafeTensors:
  """One `.safetensors` file read through the path layer (local or gs://).

  The format is an 8-byte little-endian header size, a JSON header (name ->
  dtype, shape, byte range) and the raw tensors. The header is read once;
  each tensor is then one ranged read, so a bucket file is never downloaded
  whole and no tensor is read twice.
  """

  def __init__(self, path: str):
    self.path = path
    with files.open_file(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      if not 0 < n <= _MAX_HEADER:
        raise layout.PretrainedError(f"{path!r} is not a safetensors file (header size {n})")
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise layout.PretrainedError(f"{path!r}: unreadable safetensors header: {e}") from e
    header.pop("__metadata__", None)
    self.data_start = 8 + n
    self.entries = header

  def keys(self) -> list[str]:
    return list(self.entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def dtype(self, name: str) -> str:
    return self.entries[name]["dtype"]

  def read(self, f, name: str) -> np.ndarray:
    """Tensor `name` from `f`, this file opened with `files.open_file(path)`."""
    e = self.entries[name]
    if e["dtype"] not in _SAFETENSORS_DTYPES:
      raise layout.PretrainedError(f"{self.path!r}: tensor {name!r} has dtype {e['dtype']}; "
                                   f"supported: {sorted(_SAFETENSORS_DTYPES)}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[e["dtype"]])
    begin, end = e["data_offsets"]
    if end - begin != int(np.prod(e["shape"], dtype=np.int64)) * dtype.itemsize:
      raise layout.PretrainedError(f"{self.path!r}: tensor {name!r} has {end - begin} bytes "
                                   f"for shape {e['shape']} of {e['dtype']}")
    f.seek(self.data_start + begin)
    data = f.read(end - begin)
    if len(data) != end - begin:
      raise layout.PretrainedError(f"{self.path!r} is truncated: tensor {name!r} needs bytes "
                                   f"{begin}..{end} of the data section")
    return np.frombuffer(data, dtype).reshape(e["shape"])


def _rope_theta(hf: dict) -> float:
  rope = hf.get("rope_parameters") or {}
  if isinstance(rope, dict) and "full_attention" in rope:  # per-layer-type form
    rope = rope["full_attention"]
  kind = rope.get("rope_type", "default") if rope else (hf.get("rope_scaling") or {}).get(
      "rope_type", "default")
  if kind != "default":
    raise layout.PretrainedError(f"rope_type {kind!r} is not supported; mode_jax uses the "
                                 "default rotary embedding")
  return float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def _attention_types(hf: dict, num_layers: int) -> tuple[str, ...]:
  """The shortest cycle of "local"/"global" that reproduces `layer_types`."""
  names = hf.get("layer_types")
  if not names:
    return ("local", "global")  # Gemma 2 before layer_types existed
  kinds = {"sliding_attention": "local", "full_attention": "global"}
  bad = [n for n in names if n not in kinds]
  if bad or len(names) != num_layers:
    raise layout.PretrainedError(f"config.json layer_types {names!r}: expected {num_layers} "
                                 f"entries from {sorted(kinds)}")
  types = tuple(kinds[n] for n in names)
  for p in range(1, len(types) + 1):
    if all(types[i] == types[i % p] for i in range(len(types))):
      return types[:p]
  return types


def read_config(path: str, param_dtype: str | None = None) -> config_lib.ModelConfig:
  """Infers the ModelConfig from config.json (and the stored weight dtype)."""
  hf = _read_json(path)
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise layout.PretrainedError(
        f"{files.join(path, CONFIG)}: model_type {model_type!r} is not supported; "
        f"allowed: {MODEL_TYPES}")
  act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
  if act == "gelu":
    warnings.warn("config.json asks for exact GELU; Gemma (and mode_jax) use the tanh "
                  "approximation")
  elif act not in _TANH_GELU:
    raise layout.PretrainedError(f"hidden activation {act!r} is not supported; allowed: "
                                 f"{_TANH_GELU}")
  if hf.get("tie_word_embeddings", True) is False:
    raise layout.PretrainedError("untied output embeddings are not supported (Gemma ties them)")
  if hf.get("attention_bias"):
    raise layout.PretrainedError("attention_bias=True is not supported (Gemma has no biases)")
  d, h = hf["hidden_size"], hf["num_attention_heads"]
  n_layers = hf["num_hidden_layers"]
  kw = dict(
      name="pretrained", vocab_size=hf["vocab_size"], num_layers=n_layers, embed_dim=d,
      num_heads=h, num_kv_heads=hf.get("num_key_value_heads", h),
      head_dim=hf.get("head_dim") or d // h, mlp_dim=hf["intermediate_size"],
      rope_base=_rope_theta(hf), norm_eps=float(hf.get("rms_norm_eps", 1e-6)))
  if model_type == "gemma2":
    kw.update(
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar"),
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        attention_types=_attention_types(hf, n_layers),
        sliding_window=hf.get("sliding_window"), post_norms=True)
  if param_dtype is None:
    param_dtype = _stored_dtype(path)
  kw.update(param_dtype=param_dtype, dtype=param_dtype)
  return layout.named_config(config_lib.ModelConfig(**kw))


def is_gemma2(path: str) -> bool:
  return _read_json(path).get("model_type") == "gemma2"


def rules(cfg: config_lib.ModelConfig) -> list[layout.Rule]:
  """One rule per mode_jax parameter of `cfg`."""
  v, d, h, n, k, f = (cfg.vocab_size, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads,
                      cfg.head_dim, cfg.mlp_dim)
  out = [layout.Rule("model.embed_tokens.weight", (v, d), "embedder/input_embedding"),
         layout.Rule("model.norm.weight", (d,), "final_norm/scale")]
  if cfg.post_norms:
    norms = {"input_layernorm": "pre_attention_norm",
             "post_attention_layernorm": "post_attention_norm",
             "pre_feedforward_layernorm": "pre_ffw_norm",
             "post_feedforward_layernorm": "post_ffw_norm"}
  else:
    norms = {"input_layernorm": "pre_attention_norm",
             "post_attention_layernorm": "pre_ffw_norm"}
  for i in range(cfg.num_layers):
    src, dst = f"model.layers.{i}.", f"layers/{i}/"
    out += [
        # [H*K, D] -> [H, K, D] -> [D, H, K]
        layout.Rule(src + "self_attn.q_proj.weight", (h * k, d), dst + "attn/q/kernel",
                    split=(h, k, d), axes=(1, 2, 0)),
        layout.Rule(src + "self_attn.k_proj.weight", (n * k, d), dst + "attn/k/kernel",
                    split=(n, k, d), axes=(1, 2, 0)),
        layout.Rule(src + "self_attn.v_proj.weight", (n * k, d), dst + "attn/v/kernel",
                    split=(n, k, d), axes=(1, 2, 0)),
        # [D, H*K] -> [D, H, K] -> [H, K, D]
        layout.Rule(src + "self_attn.o_proj.weight", (d, h * k), dst + "attn/o/kernel",
                    split=(d, h, k), axes=(2, 0, 1)),
        layout.Rule(src + "mlp.gate_proj.weight", (f, d), dst + "mlp/gate/kernel", axes=(1, 0)),
        layout.Rule(src + "mlp.up_proj.weight", (f, d), dst + "mlp/up/kernel", axes=(1, 0)),
        layout.Rule(src + "mlp.down_proj.weight", (d, f), dst + "mlp/down/kernel", axes=(1, 0)),
    ]
    out += [layout.Rule(src + hf_name + ".weight", (d,), dst + ours + "/scale")
            for hf_name, ours in norms.items()]
  return out


def _tensor_files(path: str) -> dict[str, SafeTensors]:
  """Tensor name -> the safetensors file holding it."""
  out: dict[str, SafeTensors] = {}
  for fname in _weight_files(path):
    st = SafeTensors(fname)
    for name in st.keys():
      if name in out:
        raise layout.PretrainedError(f"tensor {name!r} is stored twice: in "
                                     f"{out[name].path!r} and {fname!r}")
      out[name] = st
  return out


def _stored_dtype(path: str) -> str:
  tensors = _tensor_files(path)
  name = "model.embed_tokens.weight"
  if name not in tensors:
    raise layout.PretrainedError(f"Hugging Face checkpoint {path!r} lacks tensor {name!r}")
  return "bfloat16" if tensors[name].dtype(name) in ("BF16", "F16") else "float32"


def load(path: str, cfg: config_lib.ModelConfig,
         expected: Mapping[str, jax.ShapeDtypeStruct],
         shardings: Mapping[str, jax.sharding.NamedSharding]) -> dict[str, jax.Array]:
  """Reads every parameter, one tensor at a time, straight into its sharding.

  Args:
    path: the checkpoint directory (local or gs://).
    cfg: the config the weights must match.
    expected: mode_jax parameter path -> ShapeDtypeStruct.
    shardings: mode_jax parameter path -> NamedSharding.

  Returns:
    mode_jax parameter path -> sharded jax.Array.
  """
  rs = rules(cfg)
  layout.check_targets(rs, expected)
  tensors = _tensor_files(path)
  found = {name: st.shape(name) for name, st in tensors.items()}
  layout.check_tensors("Hugging Face", path, rs, found, ignored=_TIED)
  out = {}
  by_file: dict[str, list[layout.Rule]] = {}
  for r in rs:
    by_file.setdefault(tensors[r.source].path, []).append(r)
  for fname, file_rules in by_file.items():
    with files.open_file(fname, "rb") as f:
      for r in file_rules:
        host = r.apply(tensors[r.source].read(f, r.source))
        out[r.target] = layout.place_host(host, expected[r.target], shardings[r.target])
  return out
