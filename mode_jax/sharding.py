"""Device meshes and the one table of logical-axis rules.

Every parameter carries logical axis names in its `logical_axes` metadata and
the main activations are constrained by logical names through `constrain`.
This module alone maps logical names onto mesh axes, so data-parallel, FSDP
and tensor-parallel layouts differ only in the rules.

Logical names: batch, length, embed, heads, kv_heads, kv (head dim), mlp,
vocab, expert, rank, groups, cache_length, layers.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")

# The single table: logical name -> mesh axis (or tuple of axes, or None).
# The batch is split over data and fsdp; weights are split over fsdp on their
# embed dimension (ZeRO-3 style) and over model on heads / mlp / vocab.
# Adapter dimensions (expert, rank, groups) are small and stay replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("kv_heads", None),
    ("kv", None),
    ("mlp", "model"),
    ("vocab", "model"),
    ("expert", None),
    ("rank", None),
    ("groups", None),
    # The stacked axis of scanned layers (ModelConfig.scan_layers): each scan
    # step reads one layer, so sharding it would gather every step.
    ("layers", None),
)

_CONTEXT: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "mode_jax_mesh", default=None)


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a (data, fsdp, model) mesh with automatic axis types.

  Args:
    data: data-parallel size.
    fsdp: fully sharded data-parallel size.
    model: tensor-parallel size.
    devices: devices to use (default: all).
    One of the three may be -1: it takes all devices left over.

  Returns:
    A `jax.sharding.Mesh` with axes `MESH_AXES`.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  sizes = {"data": data, "fsdp": fsdp, "model": model}
  free = [k for k, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
  if free:
    rest = math.prod(v for k, v in sizes.items() if k != free[0])
    if n % rest:
      raise ValueError(f"mesh {sizes} does not divide {n} devices")
    sizes[free[0]] = n // rest
  data, fsdp, model = sizes["data"], sizes["fsdp"], sizes["model"]
  if data * fsdp * model != n:
    raise ValueError(
        f"mesh data={data} x fsdp={fsdp} x model={model} != {n} devices")
  arr = np.asarray(devices).reshape(data, fsdp, model)
  return Mesh(arr, MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None] | None,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec with the rules table.

  A mesh axis is used at most once per array: a later dimension whose rule
  names an axis already taken stays replicated.
  """
  if logical_axes is None:
    return PartitionSpec()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in logical_axes:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    axes = table[name]
    if axes is None:
      out.append(None)
      continue
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
    axes_t = tuple(a for a in axes_t if a not in used)
    used.update(axes_t)
    out.append(axes_t[0] if len(axes_t) == 1 else (axes_t or None))
  return PartitionSpec(*out)


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes that do not divide the dimension they would shard."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
    kept = []
    size = 1
    for a in axes_t:
      if dim % (size * mesh.shape[a]) == 0:
        kept.append(a)
        size *= mesh.shape[a]
    out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*out)


def named_sharding(logical_axes, shape, mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """NamedSharding for an array of `shape` with the given logical axes."""
  spec = _fit_spec(logical_to_spec(logical_axes, rules), shape, mesh)
  return NamedSharding(mesh, spec)


def state_shardings(state: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """Maps an nnx.State (or any pytree of Variables) to NamedShardings."""

  def one(v):
    if isinstance(v, nnx.Variable):
      axes = v.get_metadata().get("logical_axes")
      return v.replace(named_sharding(axes, v.shape, mesh, rules))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=DEFAULT_RULES) -> Iterator[Mesh]:
  """Context in which `constrain` places activations on `mesh` by `rules`.

  Functions traced (jitted) inside the context bake in the constraints, so
  enter it around the first call of a jitted step.
  """
  token = _CONTEXT.set((mesh, tuple(rules)))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _CONTEXT.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; the identity outside `use_mesh`."""
  ctx = _CONTEXT.get()
  if ctx is None:
    return x
  mesh, rules = ctx
  return jax.lax.with_sharding_constraint(
      x, named_sharding(logical_axes, x.shape, mesh, rules))


def rules_from_overrides(overrides: dict[str, Any] | None) -> tuple:
  """The default rules with some logical names remapped (e.g. for pure DP)."""
  table = dict(DEFAULT_RULES)
  for k, v in (overrides or {}).items():
    if k not in table:
      raise ValueError(f"unknown logical axis {k!r}; known: {sorted(table)}")
    if v is not None and not all(a in MESH_AXES for a in ((v,) if isinstance(v, str) else v)):
      raise ValueError(f"rule for {k!r} names unknown mesh axes {v!r}; known: {MESH_AXES}")
    table[k] = v
  return tuple(table.items())


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape and rule overrides, bound by gin at the entry points."""
  data: int = -1
  fsdp: int = 1
  model: int = 1

  def __post_init__(self):
    for f in ("data", "fsdp", "model"):
      v = getattr(self, f)
      if not isinstance(v, int) or v == 0 or v < -1:
        raise ValueError(f"MeshConfig.{f} must be -1 or >= 1, got {v!r}")
    if [self.data, self.fsdp, self.model].count(-1) > 1:
      raise ValueError(f"MeshConfig: at most one axis may be -1, got {self}")

  def build(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh over `devices` (default: all; aot passes a TPU topology's)."""
    return make_mesh(self.data, self.fsdp, self.model, devices=devices)


def batch_shards(mesh: Mesh, rules=DEFAULT_RULES) -> int:
  """How many ways the logical 'batch' axis is split on `mesh`."""
  spec = logical_to_spec(("batch",), rules)[0]
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  return math.prod(mesh.shape[a] for a in axes)


def check_batch(batch_size: int, micro_batches: int, mesh: Mesh, rules=DEFAULT_RULES) -> None:
  """Each micro-batch must split evenly over the data-parallel devices.

  Otherwise `_fit_spec` would drop the batch sharding and every device would
  compute the whole micro-batch; that is a start-up error, never a silent
  replication.
  """
  shards = batch_shards(mesh, rules)
  if batch_size % micro_batches or (batch_size // micro_batches) % shards:
    mesh_desc = " x ".join(f"{k}={v}" for k, v in mesh.shape.items())
    raise ValueError(
        f"BATCH_SIZE={batch_size} with micro_batches={micro_batches} gives micro-batches of "
        f"{batch_size / micro_batches:g} rows, which do not split over the {shards} "
        f"data-parallel devices of the mesh ({mesh_desc}; 'batch' is split over "
        f"{logical_to_spec(('batch',), rules)[0]}): make BATCH_SIZE / micro_batches a "
        f"multiple of {shards}")


def check_decode_batch(batch_size: int, mesh: Mesh, field: str = "the evaluation batch_size",
                       rules=DEFAULT_RULES) -> None:
  """A decoding batch must split evenly over the data-parallel devices.

  `field` names the setting in the error (e.g. "evaluate.batch_size"). As
  with `check_batch`, the alternative would be a silently replicated batch.
  """
  shards = batch_shards(mesh, rules)
  if batch_size < 1 or batch_size % shards:
    mesh_desc = " x ".join(f"{k}={v}" for k, v in mesh.shape.items())
    raise ValueError(
        f"{field}={batch_size} does not split over the {shards} data-parallel devices of the "
        f"mesh ({mesh_desc}; 'batch' is split over {logical_to_spec(('batch',), rules)[0]}): "
        f"make it a positive multiple of {shards}")
