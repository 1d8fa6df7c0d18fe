"""What every pretrained-weight layout shares: mapping rules, checks, errors.

A layout (Hugging Face safetensors, the official Flax/Orbax release) is
described by `Rule`s, one per mode_jax parameter: which checkpoint tensor it
comes from, that tensor's expected shape, and how its dimensions move. The
same rule drives the host transform (NumPy, one tensor at a time) and the
on-device transform (a jitted gather/transpose into the target sharding),
and gives the sharding in which a source tensor should be read so that the
transform needs no full copy on one device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from mode_jax.models import config as config_lib


class PretrainedError(ValueError):
  """A checkpoint that cannot be loaded; the message names the tensor or path."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """How one mode_jax parameter is made from one checkpoint tensor.

  Attributes:
    source: the tensor's name in the checkpoint.
    shape: its expected shape.
    target: the mode_jax parameter path, e.g. "layers/0/attn/q/kernel".
    index: if set, take `source[index]` first (stacked q/k/v, gate/up).
    split: if set, reshape (after `index`) to this shape.
    axes: for each dimension after index/split, the target dimension it
      becomes; the identity when empty.
  """
  source: str
  shape: tuple[int, ...]
  target: str
  index: int | None = None
  split: tuple[int, ...] | None = None
  axes: tuple[int, ...] = ()

  def apply(self, x):
    """Maps a source array (NumPy or jax) to the target's layout."""
    if self.index is not None:
      x = x[self.index]
    if self.split is not None:
      x = x.reshape(self.split)
    if self.axes:
      x = x.transpose(tuple(int(i) for i in np.argsort(self.axes)))
    return x

  def source_spec(self, target_spec: PartitionSpec, target_ndim: int) -> PartitionSpec:
    """A PartitionSpec for the source whose shards map onto the target's.

    Only defined without `split` (the official layout never reshapes).
    """
    if self.split is not None:
      raise ValueError(f"rule for {self.source!r} reshapes; no source sharding")
    spec = tuple(target_spec) + (None,) * (target_ndim - len(target_spec))
    axes = self.axes or tuple(range(target_ndim))
    lead = (None,) if self.index is not None else ()
    return PartitionSpec(*lead, *(spec[a] for a in axes))


def check_tensors(kind: str, path: str, rules: Sequence[Rule],
                  found: Mapping[str, Sequence[int]], ignored: Iterable[str] = ()) -> None:
  """Raises a PretrainedError on a missing, unexpected or misshapen tensor.

  Args:
    kind: the layout's name, for messages.
    path: the checkpoint path, for messages.
    rules: the tensors the config needs.
    found: name -> shape of every tensor in the checkpoint.
    ignored: names that may be present and are not loaded.
  """
  needed = {r.source: r for r in rules}
  missing = [n for n in needed if n not in found]
  if missing:
    r = needed[missing[0]]
    raise PretrainedError(
        f"{kind} checkpoint {path!r} lacks tensor {r.source!r} (needed for mode_jax "
        f"parameter {r.target!r}, shape {r.shape}); {len(missing)} missing in all")
  extra = sorted(set(found) - set(needed) - set(ignored))
  if extra:
    raise PretrainedError(
        f"{kind} checkpoint {path!r} has unexpected tensor {extra[0]!r} with shape "
        f"{tuple(found[extra[0]])}, which this Gemma config does not use "
        f"({len(extra)} unexpected in all)")
  for name, r in needed.items():
    got = tuple(found[name])
    if got != tuple(r.shape):
      hint = ""
      if r.target == "embedder/input_embedding" and got[1:] == tuple(r.shape[1:]):
        hint = (f"; the checkpoint's vocabulary has {got[0]} entries, the config's "
                f"{r.shape[0]} (Hugging Face Gemma stores 256000, the official Flax release "
                "256128): load with the inferred config (no model name)")
      raise PretrainedError(
          f"{kind} checkpoint {path!r}: tensor {name!r} has shape {got}, "
          f"expected {tuple(r.shape)} (for mode_jax parameter {r.target!r}){hint}")


def check_targets(rules: Sequence[Rule], expected: Mapping[str, jax.ShapeDtypeStruct]) -> None:
  """Every mode_jax parameter is made by exactly one rule (a programming check)."""
  targets = [r.target for r in rules]
  if sorted(targets) != sorted(expected):
    missing = sorted(set(expected) - set(targets))
    extra = sorted(set(targets) - set(expected))
    raise PretrainedError(f"layout rules do not cover the model: no rule for {missing[:3]}, "
                          f"rules for unknown parameters {extra[:3]}")


def place_host(x: np.ndarray, sds: jax.ShapeDtypeStruct, sharding: NamedSharding) -> jax.Array:
  """Puts a host array into `sharding`; each device receives only its shard."""
  x = np.asarray(x).astype(sds.dtype, copy=False)
  if x.shape != tuple(sds.shape):
    raise PretrainedError(f"converted shape {x.shape} != parameter shape {tuple(sds.shape)}")
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


@functools.lru_cache(maxsize=None)
def _device_transform(rule_shape: tuple, index, axes, dtype, sharding: NamedSharding):
  rule = Rule("", rule_shape, "", index=index, axes=axes)
  return jax.jit(lambda x: rule.apply(x).astype(dtype), out_shardings=sharding)


def place_device(x: jax.Array, rule: Rule, sds: jax.ShapeDtypeStruct,
                 sharding: NamedSharding) -> jax.Array:
  """Transforms a (sharded) device array into the target sharding, jitted."""
  fn = _device_transform(rule.shape, rule.index, rule.axes, np.dtype(sds.dtype), sharding)
  y = fn(x)
  if y.shape != tuple(sds.shape):
    raise PretrainedError(f"converted shape {y.shape} != parameter shape {tuple(sds.shape)}")
  return y


def named_config(cfg: config_lib.ModelConfig) -> config_lib.ModelConfig:
  """Renames an inferred config after the registered config of the same shapes."""
  for name in config_lib.config_names():
    known = config_lib.get_config(name)
    if known.replace(name=cfg.name, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy) == cfg:
      return cfg.replace(name=name)
  return cfg


def dtype_name(dtype) -> str:
  """A ModelConfig dtype for stored weights: bfloat16 stays, else float32."""
  return "bfloat16" if str(np.dtype(dtype)) == "bfloat16" else "float32"
