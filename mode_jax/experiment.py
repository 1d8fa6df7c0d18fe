"""What every entry point shares: the model of a run and its data.

Loading order (STYLE.md, written down once): resume from the run directory;
else the base checkpoint plus fresh adapters; else, for tests and the tiny
default only, a random base.
"""

from __future__ import annotations

import logging

import jax
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import files
from mode_jax import models
from mode_jax import sharding

# A random base is allowed only for models this small (tests, tiny default).
MAX_RANDOM_BASE_PARAMS = 50_000_000


def model_config(model) -> models.ModelConfig:
  """A ModelConfig from a config or a config name."""
  if isinstance(model, models.ModelConfig):
    return model
  if isinstance(model, str):
    return models.get_config(model)
  raise ValueError(f"MODEL must be a config name or models.ModelConfig, got {model!r}")


def build_model(model, adapter: adapters_lib.AdapterConfig | None,
                mesh: jax.sharding.Mesh, *, base_checkpoint: str | None = None,
                seed: int = 0) -> nnx.Module:
  """The sharded model with its base loaded (or random for tiny configs).

  `base_checkpoint` may be a mode_jax base checkpoint, a Hugging Face
  safetensors directory or an official Flax/Orbax Gemma directory; the base
  is read straight into its shardings and only the adapters are initialised.
  """
  cfg = model_config(model)
  if base_checkpoint:
    if not files.exists(base_checkpoint):
      raise FileNotFoundError(f"BASE_CHECKPOINT {base_checkpoint!r} does not exist")
    from mode_jax.models import pretrained  # pylint: disable=g-import-not-at-top
    return pretrained.from_pretrained(base_checkpoint, adapter, mesh, model=cfg, dtype=cfg.dtype,
                                      seed=seed)
  if cfg.non_embedding_params() + cfg.embedding_params() > MAX_RANDOM_BASE_PARAMS:
    raise ValueError(f"model {cfg.name!r} needs BASE_CHECKPOINT: a random base is only "
                     "allowed for tiny configs")
  logging.warning("no BASE_CHECKPOINT: the base model %s is random", cfg.name)
  return models.build_sharded(cfg, adapter, mesh, seed=seed)


def make_mesh(mesh_config: sharding.MeshConfig | None) -> jax.sharding.Mesh:
  return (mesh_config or sharding.MeshConfig()).build()
