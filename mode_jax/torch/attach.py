"""Wraps a `transformers` Gemma's projections with exported mode_jax adapters."""

from __future__ import annotations

import os

from safetensors.torch import load_file
from torch import nn

from mode_jax.torch import layers
from mode_jax.torch import spec


def load_adapters(path: str, device=None) -> tuple[dict, dict[str, layers.Adapter]]:
  """(description, HF module name -> adapter module) of export directory `path`."""
  desc = spec.read(path)
  fname = os.path.join(path, spec.TENSORS)
  if not os.path.isfile(fname):
    raise FileNotFoundError(f"{path!r}: {spec.TENSORS} not found beside {spec.DESCRIPTION}")
  tensors = load_file(fname, device=str(device or "cpu"))
  cls = layers.KINDS[desc["kind"]]
  out = {}
  for module in desc["modules"]:
    names = spec.KIND_TENSORS[desc["kind"]]
    missing = [n for n in names if spec.tensor_name(module, n) not in tensors]
    if missing:
      raise ValueError(f"{fname}: tensor {spec.tensor_name(module, missing[0])!r} missing "
                       f"(kind {desc['kind']!r} needs {names})")
    out[module] = cls({n: tensors[spec.tensor_name(module, n)] for n in names}, desc)
  return desc, out


def attach(model: nn.Module, path: str) -> nn.Module:
  """Replaces each adapted projection of `model` by `Adapted(projection, adapter)`.

  Args:
    model: a `transformers` Gemma / Gemma 2 causal LM (or its inner model)
      with the base weights the adapters were trained on.
    path: a `python -m mode_jax.export --format=torch` directory.

  Returns:
    `model`, modified in place; the adapters' buffers follow its device.

  Raises:
    ValueError: a module named in the export is absent from `model` or has
      other feature sizes.
  """
  desc, adapters = load_adapters(path)
  named = dict(model.named_modules())
  for module, adapter in adapters.items():
    name = module if module in named else module.removeprefix("model.")
    base = named.get(name)
    if base is None or isinstance(base, layers.Adapted):
      raise ValueError(f"{path}: module {module!r} is not a plain projection of the model "
                       f"(found {type(base).__name__})")
    want = desc["modules"][module]
    got = (getattr(base, "in_features", None), getattr(base, "out_features", None))
    if got != (want["in_features"], want["out_features"]):
      raise ValueError(f"{path}: module {module!r} has (in, out) features {got}, the adapter "
                       f"expects {(want['in_features'], want['out_features'])}")
    weight = base.weight
    adapter.to(device=weight.device)
    parent_name, _, child = name.rpartition(".")
    setattr(named[parent_name] if parent_name else model, child,
            layers.Adapted(base, adapter))
  return model

