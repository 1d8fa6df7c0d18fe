"""The one registry of adapter kinds: what varies by kind is declared here once.

Each adapter module ends with `registry.register(registry.Kind(...))`; the
package `__init__` imports every adapter module, so importing
`mode_jax.adapters` registers them all. `make_adapter`, `AdapterConfig`
validation, `counting.per_matrix`, the sweep points
(`experiments/points.py`), the gin-file checks and the invariant tests all
read the registry, so a new kind is one module plus its gin file (README,
"Adding an adapter kind").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

# Optional AdapterConfig fields and their neutral values: a kind that does
# not list a field in `Kind.options` must leave it at this value.
OPTIONS = {"num_experts": 1, "expert_rank": 1, "top_k": None, "bias_rate": None,
           "density": None, "aux_loss_weight": 0.0}


@dataclasses.dataclass(frozen=True)
class Kind:
  """Everything the rest of mode_jax needs to know about one adapter kind.

  Attributes:
    name: the `AdapterConfig.kind` string, e.g. "mode".
    display: the paper's name, e.g. "MoDE" (tables and plot labels).
    build: `build(cfg, in_features, out_features, rngs, *, in_axis, out_axis)`
      -> an `nnx.Module` whose call maps x [..., P] to dy [..., Q].
    count: `count(cfg, p, q)` -> {"trainable": int, "frozen": int} for one
      adapted P x Q matrix, from shapes alone (METHODS.md formulas).
    gin_macros: the macros its `configs/adapters/<name>.gin` reads (and
      binds to defaults); sweep points set them by name.
    options: the optional AdapterConfig fields (keys of OPTIONS) this kind
      takes; the others must keep their neutral values.
    validate: kind-specific checks of an AdapterConfig (raise ValueError
      naming the field); returns {field: value} defaults to resolve, or None.
    balancing: whether it keeps a balancing bias (`variables.BalancingBias`)
      that `balancing.update` steps from its selection counts.
    scale_by_top_k: the delta scale is alpha / top_k (else alpha / rank).
    examples: tiny valid AdapterConfig keyword sets (without `kind`); the
      invariant tests run on each (identity at init, NumPy reference,
      sharded = unsharded, count = built, scan = loop).
  """
  name: str
  display: str
  build: Callable[..., Any]
  count: Callable[..., dict]
  gin_macros: tuple[str, ...]
  options: frozenset = frozenset()
  validate: Callable[[Any], Mapping[str, Any] | None] | None = None
  balancing: bool = False
  scale_by_top_k: bool = False
  examples: tuple[Mapping[str, Any], ...] = ({"rank": 4},)

  def __post_init__(self):
    object.__setattr__(self, "options", frozenset(self.options))
    bad = sorted(self.options - set(OPTIONS))
    if bad:
      raise ValueError(f"adapter kind {self.name!r}: unknown options {bad}; known: "
                       f"{sorted(OPTIONS)}")


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
  """Adds a kind and returns it; a second, different kind of the same name is an error
  (re-registering the same declaration, as a module reload does, is not)."""
  old = _KINDS.get(kind.name)
  same = lambda k: (k.display, k.gin_macros, k.options, k.balancing, k.examples)
  if old is not None and same(old) != same(kind):
    raise ValueError(f"adapter kind {kind.name!r} is registered twice")
  _KINDS[kind.name] = kind
  return kind


def names() -> tuple[str, ...]:
  """Registered kind names, in registration order."""
  return tuple(_KINDS)


def get(name: str) -> Kind:
  """The registered kind; a ValueError lists the known ones."""
  if name not in _KINDS:
    raise ValueError(f"AdapterConfig.kind={name!r}; allowed: {names()}")
  return _KINDS[name]


def taking(option: str) -> tuple[str, ...]:
  """Kinds that take the optional field `option`."""
  return tuple(k.name for k in _KINDS.values() if option in k.options)


def examples() -> list[tuple[str, dict]]:
  """(kind, AdapterConfig kwargs) of every registered example, for tests."""
  return [(k.name, {"kind": k.name, **ex}) for k in _KINDS.values() for ex in k.examples]
