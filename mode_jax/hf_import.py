"""PEFT LoRA adapters back into mode_jax (the inverse of `hf_export.write_peft`).

    cfg, arrays = read_peft(PEFT_DIR, model_config)   # AdapterConfig + host arrays
    model = from_pretrained(BASE, PEFT_DIR)           # base + those adapters, sharded
    load_adapters(model, PATH)                        # into a model built with them

PATH may also be a `python -m mode_jax.export` (format orbax) or
`python -m mode_jax.convert PEFT_DIR DST --base BASE` directory.

A PEFT LoRA maps onto kind="lora" exactly: lora_a = lora_A.weight.T [P, R],
lora_b = lora_B.weight.T [R, Q], alpha = lora_alpha (scale alpha / R). Only
what mode_jax's LoRA can express is accepted: one rank and alpha for every
module, the same target set in every layer, no rsLoRA, DoRA, biases,
fan_in_fan_out or extra trained modules; anything else is an error naming
the field.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import files
from mode_jax import hf_export
from mode_jax import sharding
from mode_jax import trainer
from mode_jax.layers import linear
from mode_jax.models import build
from mode_jax.models import hf_layout
from mode_jax.models import config as config_lib
from mode_jax.models import pretrained

# PEFT config fields and the only values mode_jax's LoRA reproduces.
_REQUIRED = {"peft_type": "LORA", "use_rslora": False, "use_dora": False, "bias": "none",
             "fan_in_fan_out": False}
_EMPTY = ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform")
_INIT = ("a_init_scale", "b_init_scale", "router_init_scale")


def is_peft(path: str) -> bool:
  return os.path.isfile(os.path.join(path, hf_export.PEFT_CONFIG))


def read_peft(path: str, cfg: config_lib.ModelConfig
              ) -> tuple[adapters_lib.AdapterConfig, dict[str, dict[str, np.ndarray]]]:
  """(AdapterConfig, projection path -> {"lora_a", "lora_b"}) of a PEFT LoRA directory.

  Args:
    path: holds adapter_config.json and adapter_model.safetensors.
    cfg: the base model's config (which modules exist, their shapes).
  """
  cfile = os.path.join(path, hf_export.PEFT_CONFIG)
  wfile = os.path.join(path, hf_export.PEFT_WEIGHTS)
  for f in (cfile, wfile):
    if not os.path.isfile(f):
      raise FileNotFoundError(f"PEFT adapter {path!r}: {os.path.basename(f)} not found")
  with open(cfile) as f:
    pc = json.load(f)
  for k, want in _REQUIRED.items():
    if pc.get(k, want) != want:
      raise ValueError(f"{cfile}: {k}={pc[k]!r} is not supported (mode_jax LoRA needs {want!r})")
  for k in _EMPTY:
    if pc.get(k):
      raise ValueError(f"{cfile}: {k}={pc[k]!r} is not supported (mode_jax applies one rank "
                       "and alpha to the same matrices of every layer)")
  rank, alpha = pc.get("r"), pc.get("lora_alpha")
  if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
    raise ValueError(f"{cfile}: r={rank!r} and lora_alpha={alpha!r} must be a positive int "
                     "and a number")
  ours = {hf: path for path, hf in hf_export.hf_modules(cfg).items()}
  st = hf_layout.SafeTensors(wfile)  # bfloat16 too, local or gs:// (the path layer)
  with files.open_file(wfile, "rb") as f:
    tensors = {name: st.read(f, name) for name in st.keys()}
  arrays: dict[str, dict[str, np.ndarray]] = {}
  for name, x in tensors.items():
    module, _, kind = name.removeprefix(hf_export.PEFT_PREFIX).rpartition(".lora_")
    kind = {"A.weight": "lora_a", "B.weight": "lora_b"}.get(kind)
    module = module.removesuffix(".default")
    if kind is None or module not in ours:
      raise ValueError(f"{wfile}: tensor {name!r} is not the LoRA A/B of a Gemma projection "
                       f"(expected e.g. {hf_export.PEFT_PREFIX}model.layers.0.self_attn."
                       "q_proj.lora_A.weight)")
    arrays.setdefault(ours[module], {})[kind] = np.asarray(x, np.float32).T
  targets = sorted({p.rsplit("/", 1)[-1] for p in arrays},
                   key=adapters_lib.TARGETS.index)
  want = {p for p in ours.values() if p.rsplit("/", 1)[-1] in targets}
  if set(arrays) != want:
    gap = sorted(want - set(arrays))
    raise ValueError(f"{wfile}: targets {targets} are adapted in some layers only (no adapter "
                     f"for {gap[:3]}); mode_jax adapts the same matrices in every layer")
  for p, ab in arrays.items():
    if (set(ab) != {"lora_a", "lora_b"} or ab["lora_a"].shape[1] != rank
        or ab["lora_b"].shape[0] != rank):
      raise ValueError(f"{wfile}: module {p!r} needs lora_A [{rank}, P] and lora_B [Q, {rank}]"
                       f", found {({k: v.shape for k, v in ab.items()})}")
  acfg = adapters_lib.AdapterConfig(kind="lora", rank=rank, alpha=float(alpha),
                                    targets=tuple(targets))
  return acfg, arrays


def load_adapters(model: nnx.Module, path: str) -> None:
  """Copies exported adapters into `model`'s adapters, in place, in their sharding.

  Args:
    model: a mode_jax model built with the exported adapter config.
    path: a PEFT LoRA directory, or a mode_jax orbax export (manifest.json +
      adapters/) of any kind.

  Raises:
    ValueError: the adapter and the model's adapters differ (kind, targets,
      rank or shapes), naming what differs.
  """
  if not is_peft(path):
    _load_orbax_export(model, path)
    return
  acfg, arrays = read_peft(path, model.config)
  mine = model.adapter_config
  if mine is None or (mine.kind, mine.rank, mine.targets) != ("lora", acfg.rank, acfg.targets):
    raise ValueError(f"PEFT adapter {path!r} is LoRA rank {acfg.rank} on {acfg.targets}; the "
                     f"model's adapter is {mine}")
  if not np.isclose(mine.scale, acfg.scale, rtol=1e-6):
    raise ValueError(f"PEFT adapter {path!r} has scale {acfg.scale} (lora_alpha / r); the "
                     f"model's LoRA has {mine.scale}")
  for path_, node in nnx.iter_graph(model):
    if isinstance(node, linear.Projection) and node.adapter is not None:
      key = "/".join(map(str, path_))
      for name in ("lora_a", "lora_b"):
        var = getattr(node.adapter, name)
        old = var.get_value()
        new = arrays[key][name]
        if new.shape != old.shape:
          raise ValueError(f"PEFT adapter {path!r}: {key}/{name} has shape {new.shape}, the "
                           f"model's {old.shape}")
        var.set_value(jax.device_put(new.astype(old.dtype), old.sharding))


def _load_orbax_export(model: nnx.Module, path: str) -> None:
  manifest_path = os.path.join(path, hf_export.MANIFEST)
  if not os.path.isfile(manifest_path):
    raise FileNotFoundError(f"{path!r} is neither a PEFT adapter ({hf_export.PEFT_CONFIG}) nor "
                            "a mode_jax export (manifest.json + adapters/)")
  with open(manifest_path) as f:
    manifest = json.load(f)
  if manifest.get("format", "orbax") != "orbax":
    raise ValueError(f"{manifest_path}: format {manifest['format']!r}; load_adapters reads "
                     "'orbax' exports and PEFT directories")
  method = adapters_lib.AdapterConfig(**{**manifest["method"],
                                         "targets": tuple(manifest["method"]["targets"])})
  mine = model.adapter_config
  # The initialisation scales do not change what the weights compute.
  if mine is None or dataclasses.replace(method, **{k: getattr(mine, k) for k in _INIT}) != mine:
    raise ValueError(f"{manifest_path}: adapters {method} differ from the model's "
                     f"{model.adapter_config}")
  _, params, astate, _ = trainer.split_model(model)
  restored = checkpoints.restore_adapters(
      os.path.join(path, hf_export.ADAPTERS),
      checkpoints.abstract_like({"params": params, "adapter_state": astate}))
  nnx.update(model, restored["params"], restored["adapter_state"])


def from_pretrained(base: str, adapters: str, mesh: jax.sharding.Mesh | None = None,
                    rules=sharding.DEFAULT_RULES, **kwargs) -> nnx.Module:
  """The base of `base` (any layout) with the PEFT LoRA of `adapters`, both sharded.

  The base is read by `models.pretrained.from_pretrained` (which takes the
  keyword arguments); the adapter arrays are placed straight into the
  shardings of their logical axes, with no random initialisation first.
  """
  cfg = pretrained.read_config(base, kwargs.pop("model", None), kwargs.get("param_dtype"),
                               kwargs.get("dtype"))
  acfg, arrays = read_peft(adapters, cfg)
  if mesh is None:
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
  plain = pretrained.from_pretrained(base, None, mesh, model=cfg, rules=rules, **kwargs)
  model = build.abstract_model(plain.config, acfg)
  astate = nnx.state(model, adapters_lib.ADAPTER)
  shardings = nnx.to_pure_dict(sharding.state_shardings(astate, mesh, rules))

  def place(key_path, sds):
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path]
    proj, name = "/".join(keys[:keys.index("adapter")]), keys[-1]
    x = arrays[proj][name]
    if x.shape != tuple(sds.shape):
      raise ValueError(f"PEFT adapter {adapters!r}: {proj}/{name} has shape {x.shape}, the "
                       f"model's {tuple(sds.shape)}")
    return jax.device_put(x.astype(sds.dtype), _at(shardings, key_path))

  nnx.replace_by_pure_dict(astate, jax.tree_util.tree_map_with_path(
      place, nnx.to_pure_dict(astate)))
  nnx.update(model, nnx.state(plain, adapters_lib.FROZEN_BASE), astate)
  return model


def _at(tree, key_path):
  for k in key_path:
    tree = tree[getattr(k, "key", getattr(k, "idx", k))]
  return tree
