"""Parameter counts of the adapter family (METHODS.md formulas).

Counts are computed from shapes alone, so the paper's "added parameters"
column can be checked before anything is built.
"""

from __future__ import annotations

from typing import Any

from mode_jax.adapters import config as config_lib


def per_matrix(cfg: config_lib.AdapterConfig, p: int, q: int) -> dict[str, int]:
  """Trainable and frozen adapter parameters of one adapted P x Q matrix.

  "frozen" counts adapter weights that are stored but never trained:
  FlyLoRA's random `lora_a`, P * R elements stored dense (of which
  round(rho * P) * R are non-zero). Balancing biases (R) and FlyLoRA's seed
  are non-trained state, not weights, and are counted in neither.
  """
  r, e = cfg.rank, cfg.num_experts
  if cfg.kind == "flylora":
    return {"trainable": r * q, "frozen": p * r}
  if cfg.kind == "smora":
    return {"trainable": r * p + r * q + p * r, "frozen": 0}
  if cfg.kind == "lora":
    trainable = r * (p + q)
  elif cfg.kind == "molora":
    trainable = e * r * (p + q) + e * p
  elif cfg.kind == "molora_sd":
    trainable = r * p + e * r * q + e * p
  elif cfg.kind == "mode":
    trainable = r * p + e * r * q + cfg.num_groups * e * p
  else:
    raise ValueError(f"no parameter count for adapter kind {cfg.kind!r}")
  return {"trainable": trainable, "frozen": 0}


def count_params(model_config: Any, adapter_config: config_lib.AdapterConfig) -> dict[str, Any]:
  """Adapter parameter counts per target and in total.

  Args:
    model_config: a model config with `target_shapes()` -> {target: (P, Q)}
      for one layer, `num_layers`, and `non_embedding_params()`.
    adapter_config: the adapter configuration.

  Returns:
    {"per_target": {t: {"P", "Q", "per_layer", "frozen_per_layer", "trainable",
                        "frozen"}},
     "trainable": int, "frozen": int, "base_non_embedding": int,
     "percent_of_base": float}
  """
  shapes = model_config.target_shapes()
  layers = model_config.num_layers
  per_target = {}
  for t in adapter_config.targets:
    p, q = shapes[t]
    c = per_matrix(adapter_config, p, q)
    per_target[t] = {"P": p, "Q": q, "per_layer": c["trainable"],
                     "frozen_per_layer": c["frozen"],
                     "trainable": c["trainable"] * layers, "frozen": c["frozen"] * layers}
  trainable = sum(v["trainable"] for v in per_target.values())
  frozen = sum(v["frozen"] for v in per_target.values())
  base = model_config.non_embedding_params()
  return {"per_target": per_target, "trainable": trainable, "frozen": frozen,
          "base_non_embedding": base, "percent_of_base": 100.0 * trainable / base}
