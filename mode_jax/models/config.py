"""Model configurations of the Gemma family, as frozen dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Sequence

ATTENTION_TYPES = ("global", "local")
# What a rematerialised block keeps for the backward pass (`remat_policy`):
# nothing extra ("none" = no rematerialisation), only its inputs ("full"),
# or also the outputs of its matmuls ("save_dots": those without batch
# dimensions, `jax.checkpoint_policies.dots_with_no_batch_dims_saveable`;
# "save_all_dots": every dot, `checkpoint_dots`).
REMAT_POLICIES = ("none", "full", "save_dots", "save_all_dots")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and options of a Gemma-family decoder.

  Gemma 1 is the default; Gemma 2 adds logit soft-capping, alternating
  local (sliding-window) and global attention, and post-norms.

  Attributes:
    name: config name.
    vocab_size: V.
    num_layers: number of decoder blocks.
    embed_dim: D (d_model).
    num_heads: H query heads.
    num_kv_heads: key/value heads (1 = multi-query; H = multi-head).
    head_dim: K.
    mlp_dim: hidden size of the gated-GELU MLP.
    rope_base: rotary base wavelength.
    norm_eps: RMSNorm epsilon.
    dtype: activation dtype ("float32" or "bfloat16").
    param_dtype: dtype of the base parameters (the frozen base: "bfloat16"
      halves its memory; adapters and their optimizer state are float32
      whatever this is).
    query_pre_attn_scalar: queries are scaled by its -1/2 power (None:
      head_dim).
    attn_logit_softcap: Gemma 2 attention soft-cap (None: off).
    final_logit_softcap: Gemma 2 output soft-cap (None: off).
    attention_types: per-layer pattern cycled over the layers.
    sliding_window: window of "local" layers.
    post_norms: Gemma 2 post-attention / post-MLP norms.
    scan_layers: run the blocks as one `jax.lax.scan` over parameters
      stacked along a leading `layers` axis (compile time independent of
      depth; the KV cache is stacked too). Same numbers as the loop.
    remat_policy: rematerialisation of each block in the backward pass, one
      of REMAT_POLICIES ("none": keep every activation).
  """
  name: str = "tiny"
  vocab_size: int = 512
  num_layers: int = 2
  embed_dim: int = 64
  num_heads: int = 4
  num_kv_heads: int = 1
  head_dim: int = 16
  mlp_dim: int = 256
  rope_base: float = 10_000.0
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  query_pre_attn_scalar: float | None = None
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  attention_types: tuple[str, ...] = ("global",)
  sliding_window: int | None = None
  post_norms: bool = False
  scan_layers: bool = False
  remat_policy: str = "none"

  def __post_init__(self):
    for f in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads",
              "head_dim", "mlp_dim"):
      v = getattr(self, f)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"ModelConfig.{f} must be a positive int, got {v!r}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
    for f in ("dtype", "param_dtype"):
      if getattr(self, f) not in ("float32", "bfloat16"):
        raise ValueError(f"ModelConfig.{f}={getattr(self, f)!r}; allowed: float32, bfloat16")
    types = tuple(self.attention_types)
    object.__setattr__(self, "attention_types", types)
    if not types or any(t not in ATTENTION_TYPES for t in types):
      raise ValueError(f"ModelConfig.attention_types={types!r}; allowed: {ATTENTION_TYPES}")
    if not isinstance(self.scan_layers, bool):
      raise ValueError(f"ModelConfig.scan_layers must be a bool, got {self.scan_layers!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig.remat_policy={self.remat_policy!r}; allowed: "
                       f"{REMAT_POLICIES}")
    if "local" in types and not self.sliding_window:
      raise ValueError("ModelConfig.sliding_window is required with local attention layers")

  def layer_attention_type(self, i: int) -> str:
    return self.attention_types[i % len(self.attention_types)]

  def target_shapes(self) -> dict[str, tuple[int, int]]:
    """(P, Q) of each adaptable matrix of one layer."""
    d, h, kv, k, m = (self.embed_dim, self.num_heads, self.num_kv_heads,
                      self.head_dim, self.mlp_dim)
    return {"q": (d, h * k), "k": (d, kv * k), "v": (d, kv * k), "o": (h * k, d),
            "gate": (d, m), "up": (d, m), "down": (m, d)}

  def non_embedding_params(self) -> int:
    """Base parameters outside the (tied) embedding."""
    per_layer = sum(p * q for p, q in self.target_shapes().values())
    per_layer += self.embed_dim * (4 if self.post_norms else 2)
    return self.num_layers * per_layer + self.embed_dim

  def embedding_params(self) -> int:
    return self.vocab_size * self.embed_dim

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


_CONFIGS: dict[str, ModelConfig] = {
    # Gemma 1 2B: the paper's base model.
    "gemma_2b": ModelConfig(
        name="gemma_2b", vocab_size=256_128, num_layers=18, embed_dim=2048,
        num_heads=8, num_kv_heads=1, head_dim=256, mlp_dim=16_384),
    # The same model as released on Hugging Face, whose embedding keeps only
    # the 256,000 used rows (the official Flax release has 256,128).
    "gemma_2b_hf": ModelConfig(
        name="gemma_2b_hf", vocab_size=256_000, num_layers=18, embed_dim=2048,
        num_heads=8, num_kv_heads=1, head_dim=256, mlp_dim=16_384),
    "gemma_7b": ModelConfig(
        name="gemma_7b", vocab_size=256_128, num_layers=28, embed_dim=3072,
        num_heads=16, num_kv_heads=16, head_dim=256, mlp_dim=24_576),
    # Gemma 2 2B (for checkpoints of that generation).
    "gemma2_2b": ModelConfig(
        name="gemma2_2b", vocab_size=256_000, num_layers=26, embed_dim=2304,
        num_heads=8, num_kv_heads=4, head_dim=256, mlp_dim=9216,
        query_pre_attn_scalar=256, attn_logit_softcap=50.0, final_logit_softcap=30.0,
        attention_types=("local", "global"), sliding_window=4096, post_norms=True),
    # CPU configs: unit tests and the embedded default.
    "tiny": ModelConfig(name="tiny"),
    "tiny_gqa": ModelConfig(name="tiny_gqa", num_kv_heads=2, num_layers=2),
    "tiny_quickstart": ModelConfig(
        name="tiny_quickstart", vocab_size=1024, num_layers=4, embed_dim=128,
        num_heads=4, num_kv_heads=1, head_dim=32, mlp_dim=512),
}


def get_config(name: str) -> ModelConfig:
  """Returns the named config; raises ValueError listing the known names."""
  if name not in _CONFIGS:
    raise ValueError(f"unknown model config {name!r}; known: {sorted(_CONFIGS)}")
  return _CONFIGS[name]


def named_config(name: str, *, dtype: str | None = None, param_dtype: str | None = None,
                 scan_layers: bool | None = None, remat_policy: str | None = None,
                 num_layers: int | None = None) -> ModelConfig:
  """`get_config(name)` with its run options replaced; the shapes stay the registry's.

  What gin model files bind (`MODEL = @models.named_config()`), so that a
  gin file cannot drift from the shapes defined here. None keeps the named
  config's value. `num_layers` keeps every layer's shapes and drops layers
  (a quick compile check at full width); the rest are how the model runs.
  """
  cfg = get_config(name)
  options = {"dtype": dtype, "param_dtype": param_dtype, "scan_layers": scan_layers,
             "remat_policy": remat_policy, "num_layers": num_layers}
  return cfg.replace(**{k: v for k, v in options.items() if v is not None})


def config_names() -> Sequence[str]:
  return tuple(sorted(_CONFIGS))
