"""Parameter counts of the adapter family (METHODS.md formulas).

Counts are computed from shapes alone, so the paper's "added parameters"
column can be checked before anything is built.
"""

from __future__ import annotations

from typing import Any

from mode_jax.adapters import config as config_lib
from mode_jax.adapters import registry


def per_matrix(cfg: config_lib.AdapterConfig, p: int, q: int) -> dict[str, int]:
  """Trainable and frozen adapter parameters of one adapted P x Q matrix.

  "frozen" counts adapter weights that are stored but never trained:
  FlyLoRA's random `lora_a`, P * R elements stored dense (of which
  round(rho * P) * R are non-zero). Balancing biases (R) and FlyLoRA's seed
  are non-trained state, not weights, and are counted in neither. Each
  kind's `registry.Kind.count` gives the formula.
  """
  return registry.get(cfg.kind).count(cfg, p, q)


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
