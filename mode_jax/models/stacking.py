"""Looped and scanned layer layouts of a decoder's state, and the moves between them.

A looped model keeps block i at `layers/<i>/...`; a scanned one
(`ModelConfig.scan_layers`) keeps one block at `layers/...` whose every
variable has a leading axis of size num_layers, named `layers` in its
logical axes (replicated by the sharding rules). Block i of the loop is
slice i of the stack, so the two hold the same numbers and convert exactly.

Base checkpoints are always written looped (`checkpoints.save_base`) and
every pretrained layout maps onto looped paths, so a scanned model loads
them through its looped twin and `stack` (`load_stacked`). Run checkpoints
hold whichever layout trained them and say which (`layout_of`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LOOPED, SCANNED = "looped", "scanned"
LAYER_AXIS = "layers"


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def stack_variables(states: Sequence[Any]) -> Any:
  """One pytree of Variables from per-layer ones, each value stacked on axis 0.

  The `logical_axes` metadata gains a leading "layers".
  """

  return jax.tree.map(lambda *vs: _stack_var(vs), *states, is_leaf=_is_var)


def unstack_variables(state: Any, num_layers: int) -> list[Any]:
  """The inverse of `stack_variables`: one pytree per layer."""

  return [jax.tree.map(lambda v, i=i: _unstack_var(v, i), state, is_leaf=_is_var)
          for i in range(num_layers)]


def layout_of(tree: Any) -> str | None:
  """LOOPED, SCANNED, or None (no layers) for a model state or its pure dict.

  Looped layers are keyed by integers (or their strings, after a round trip
  through a checkpoint); scanned layers by the block's attribute names.
  """
  layers = tree.get(LAYER_AXIS) if hasattr(tree, "get") else None
  if layers is None or not len(layers):
    return None
  return LOOPED if all(str(k).isdigit() for k in layers.keys()) else SCANNED


def _stack_var(vs):
  axes = vs[0].get_metadata().get("logical_axes")
  meta = {} if axes is None else {"logical_axes": (LAYER_AXIS,) + tuple(axes)}
  return vs[0].replace(jnp.stack([v.get_value() for v in vs]), **meta)


def _unstack_var(v, i):
  axes = v.get_metadata().get("logical_axes")
  meta = {} if axes is None else {"logical_axes": tuple(axes)[1:]}
  return v.replace(v.get_value()[i], **meta)


def stack(state: nnx.State) -> nnx.State:
  """A looped model state (any filter of it) in the scanned layout."""
  flat = list(state.flat_state())
  out = [(p, v) for p, v in flat if p[0] != LAYER_AXIS]
  per_layer: dict[int, dict] = {}
  for p, v in flat:
    if p[0] == LAYER_AXIS:
      per_layer.setdefault(int(p[1]), {})[p[2:]] = v
  layers = [per_layer[i] for i in sorted(per_layer)]
  out += [((LAYER_AXIS,) + rest, _stack_var([layer[rest] for layer in layers]))
          for rest in layers[0]] if layers else []
  return nnx.State.from_flat_path(out)


def unstack(state: nnx.State, num_layers: int) -> nnx.State:
  """A scanned model state (any filter of it) in the looped layout."""
  out = []
  for p, v in state.flat_state():
    if p[0] != LAYER_AXIS:
      out.append((p, v))
    else:
      out += [((LAYER_AXIS, i) + p[1:], _unstack_var(v, i)) for i in range(num_layers)]
  return nnx.State.from_flat_path(out)


def looped_state(state: nnx.State, num_layers: int) -> nnx.State:
  """`state` in the looped layout, whichever it is in."""
  return unstack(state, num_layers) if layout_of(state) == SCANNED else state


def load_stacked(model: nnx.Module, looped_twin: nnx.Module,
                 load: Callable[[nnx.Module], None], shardings: Any,
                 wrt=nnx.Param) -> None:
  """Loads `wrt` variables of a scanned `model` through its looped twin.

  Args:
    model: the scanned model (concrete or abstract); updated in place.
    looped_twin: an abstract looped model of the same config.
    load: fills the twin's `wrt` variables in place (any looped loader).
    shardings: NamedShardings of `nnx.state(model, wrt)` (the stacked
      parameters are written straight into them).
    wrt: the variable filter loaded (default: every nnx.Param).
  """
  load(looped_twin)
  looped = nnx.state(looped_twin, wrt)
  stacked = jax.jit(stack, out_shardings=shardings)(looped)
  nnx.update(model, stacked)
