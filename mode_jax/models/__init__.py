"""Gemma-family decoder models: configs and builders.

Public API:
  get_config(name) -> ModelConfig
  named_config(name, dtype=..., remat_policy=...) -> ModelConfig (gin model files)
  Transformer(config, adapter_config=None, rngs=...)
  build_model(config, adapter_config=None, seed=0)          concrete
  abstract_model(config, adapter_config=None)               ShapeDtypeStructs
  build_sharded(config, adapter_config, mesh, seed=0)       sharded by logical axes
  param_counts(model) -> {"embedding", "non_embedding", "adapter_trainable", ...}
"""

from mode_jax.models.build import abstract_model, build_model, build_sharded, param_counts
from mode_jax.models.config import ModelConfig, config_names, get_config, named_config
from mode_jax.models.transformer import Transformer


def from_pretrained(*args, **kwargs):
  """Loads pretrained weights; see `mode_jax.models.pretrained.from_pretrained`."""
  from mode_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  return pretrained.from_pretrained(*args, **kwargs)
