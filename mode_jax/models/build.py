"""Building models abstractly first, then concretely or sharded."""

from __future__ import annotations

import math
from typing import Callable

import jax
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import sharding
from mode_jax.models import config as config_lib
from mode_jax.models import stacking
from mode_jax.models import transformer


def build_model(cfg: config_lib.ModelConfig,
                adapter: adapters_lib.AdapterConfig | None = None,
                seed: int = 0) -> transformer.Transformer:
  """A concrete model on the default device (tests and tiny configs)."""
  return transformer.Transformer(cfg, adapter, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: config_lib.ModelConfig,
                   adapter: adapters_lib.AdapterConfig | None = None) -> transformer.Transformer:
  """The model with ShapeDtypeStruct leaves; nothing is materialised."""
  return nnx.eval_shape(lambda: transformer.Transformer(cfg, adapter, rngs=nnx.Rngs(0)))


def build_sharded(cfg: config_lib.ModelConfig,
                  adapter: adapters_lib.AdapterConfig | None,
                  mesh: jax.sharding.Mesh, seed: int = 0,
                  rules=sharding.DEFAULT_RULES) -> transformer.Transformer:
  """Initialises every parameter directly into its logical-axis sharding."""
  abstract = abstract_model(cfg, adapter)
  graphdef, abs_state = nnx.split(abstract)
  shardings = sharding.state_shardings(abs_state, mesh, rules)

  @jax.jit
  def init():
    model = transformer.Transformer(cfg, adapter, rngs=nnx.Rngs(params=seed))
    return nnx.state(model)

  state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def looped(model: transformer.Transformer) -> transformer.Transformer:
  """`model` in the looped layout: the same numbers, block i at `layers/<i>/...`.

  A looped model is returned as is; a scanned one (`scan_layers`) is
  unstacked into a looped twin (`stacking.looped_state`; the layer weights
  exist twice while it is built). Tools that address layers by index
  (exports, analyses of run checkpoints) read a scanned run through this.
  """
  if not model.config.scan_layers:
    return model
  twin = abstract_model(model.config.replace(scan_layers=False), model.adapter_config)
  graphdef, _ = nnx.split(twin)
  return nnx.merge(graphdef, stacking.looped_state(nnx.state(model), model.config.num_layers))


def load_base(model: transformer.Transformer, load: Callable[[nnx.Module], None],
              mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES) -> None:
  """Fills `model`'s frozen base with a loader written for looped layers.

  `load(m)` fills the base parameters of a looped model `m` in place (every
  checkpoint layout maps onto looped paths). A looped `model` is passed
  as is; a scanned one gets an abstract looped twin, loaded and then
  stacked straight into the scanned shardings (the layer weights exist
  twice on the devices while they are stacked).
  """
  if not model.config.scan_layers:
    load(model)
    return
  twin = abstract_model(model.config.replace(scan_layers=False))
  shardings = sharding.state_shardings(nnx.state(model, adapters_lib.FROZEN_BASE), mesh, rules)
  stacking.load_stacked(model, twin, load, shardings, wrt=adapters_lib.FROZEN_BASE)


def _count(state) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def param_counts(model: nnx.Module) -> dict[str, int]:
  """Counts of a (possibly abstract) model by variable type."""
  base = nnx.state(model, adapters_lib.FROZEN_BASE)
  emb = _count(nnx.state(model.embedder, nnx.Param))
  return {
      "embedding": emb,
      "non_embedding": _count(base) - emb,
      "adapter_trainable": _count(nnx.state(model, adapters_lib.TRAINABLE)),
      "adapter_state": _count(nnx.state(model, adapters_lib.AdapterState)),
  }
