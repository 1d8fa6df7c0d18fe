"""Loading pretrained Gemma weights into mode_jax, sharded.

Three layouts are recognised, in this order:
  1. a mode_jax base checkpoint (`mode_jax_base.json` + `params/`), written
     by `python -m mode_jax.convert` or `checkpoints.save_base`;
  2. a Hugging Face directory (`config.json` + `*.safetensors`);
  3. the official Flax/Orbax release (an Orbax directory, or a directory
     holding exactly one, as on Kaggle).

The model is built abstractly first; each tensor is then read (HF: on the
host, one at a time; official: restored already sharded) and placed in the
NamedSharding of its logical axes, so no device ever holds the full model.
Adapters, if asked for, are initialised fresh directly into their sharding.
"""

from __future__ import annotations

import os

import jax
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import files
from mode_jax import sharding
from mode_jax.models import build
from mode_jax.models import config as config_lib
from mode_jax.models import flax_layout
from mode_jax.models import hf_layout
from mode_jax.models import layout
from mode_jax.models import transformer

BASE, HF, FLAX = "mode_jax_base", "huggingface", "flax"
LAYOUTS = (BASE, HF, FLAX)
TOKENIZER = "tokenizer.model"
PretrainedError = layout.PretrainedError


def detect_layout(path: str) -> str:
  """Returns BASE, HF or FLAX; raises PretrainedError naming what was looked for."""
  path = os.fspath(path)
  if not files.isdir(path):
    raise PretrainedError(f"pretrained checkpoint {path!r} is not a directory")
  if checkpoints.is_base_checkpoint(path):
    return BASE
  if hf_layout.detect(path):
    return HF
  if flax_layout.detect(path):
    return FLAX
  raise PretrainedError(
      f"cannot tell the checkpoint layout of {path!r}: looked for "
      f"{checkpoints.BASE_METADATA} (mode_jax base checkpoint), {hf_layout.CONFIG} with "
      "*.safetensors (Hugging Face), and an Orbax checkpoint directory, itself or its only "
      "subdirectory, with one of _METADATA, checkpoint, manifest.ocdbt (official Flax "
      "release)")


def read_config(path: str, model: str | config_lib.ModelConfig | None = None,
                param_dtype: str | None = None, dtype: str | None = None) -> config_lib.ModelConfig:
  """The ModelConfig of a checkpoint: named (`model`), stored, or inferred.

  Args:
    path: checkpoint directory of any layout.
    model: a registered config name (for example "gemma_2b") or a
      ModelConfig, overriding inference; the weights must have its shapes.
    param_dtype: "float32" or "bfloat16" (default: the stored dtype, or
      the named config's).
    dtype: activation dtype (default: `param_dtype`).

  A base checkpoint keeps its stored config; only `dtype` and the parameter
  dtype (`param_dtype`, else the named model's) may differ, and a `model`
  whose shapes differ from it is an error.
  """
  path = os.fspath(path)
  kind = detect_layout(path)
  named = model
  if named is not None and not isinstance(named, config_lib.ModelConfig):
    named = config_lib.get_config(named)
  if kind == BASE:  # the stored config; only the activation dtype may change
    cfg = checkpoints.read_base_config(path)
    same = dict(name=cfg.name, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy)
    if named is not None and named.replace(**same) != cfg:
      raise PretrainedError(f"base checkpoint {path!r} holds model {cfg}, but the requested "
                            f"model is {named}")
    pdt = param_dtype or (named.param_dtype if named is not None else cfg.param_dtype)
    if named is not None:  # how to run it (not what it is) comes from the request
      cfg = cfg.replace(scan_layers=named.scan_layers, remat_policy=named.remat_policy)
    return cfg.replace(dtype=dtype or cfg.dtype, param_dtype=pdt)
  if named is not None:  # its own dtypes unless overridden
    cfg = named
    cfg = cfg.replace(param_dtype=param_dtype or cfg.param_dtype)
    return cfg.replace(dtype=dtype or (param_dtype or cfg.dtype))
  if kind == HF:
    cfg = hf_layout.read_config(path, param_dtype)
  else:
    cfg = flax_layout.read_config(path, param_dtype)
  param_dtype = param_dtype or cfg.param_dtype
  return cfg.replace(param_dtype=param_dtype, dtype=dtype or param_dtype)


def tokenizer_path(path: str) -> str | None:
  """The SentencePiece `tokenizer.model` of a checkpoint, or None.

  Looked for in `path` and its parent (Kaggle puts it beside the weights
  directory); either may be a bucket path. The data pipeline builds
  `seqio.SentencePieceVocabulary` from it (`data.vocab.get_vocabulary`
  copies a bucket file locally first); this module stays free of seqio and
  TensorFlow.
  """
  path = files.absolute(path)
  for d in (path, files.parent(path)):
    p = files.join(d, TOKENIZER)
    if files.isfile(p):
      return p
  return None


def _name(key_path) -> str:
  """"layers/0/attn/q/kernel" from a pytree key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def _flat(tree) -> dict:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_name(kp): x for kp, x in leaves}


def load_base_state(path: str, cfg: config_lib.ModelConfig, base_abs: nnx.State,
                    mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES) -> nnx.State:
  """Reads an HF or official checkpoint into `base_abs` (abstract base state).

  Returns:
    The base state with sharded jax.Array values.
  """
  kind = detect_layout(path)
  pure = nnx.to_pure_dict(base_abs)
  expected = _flat(pure)
  shardings = _flat(nnx.to_pure_dict(sharding.state_shardings(base_abs, mesh, rules)))
  reader = {HF: hf_layout, FLAX: flax_layout}.get(kind)
  if reader is None:
    raise PretrainedError(f"{path!r} is a {kind} checkpoint; use checkpoints.restore_base")
  loaded = reader.load(path, cfg, expected, shardings)
  values = jax.tree_util.tree_map_with_path(lambda kp, _: loaded[_name(kp)], pure)
  nnx.replace_by_pure_dict(base_abs, values)
  return base_abs


def _init_adapters(cfg, adapter_config, rest_abs, mesh, rules, seed):
  """Fresh adapter state, jitted into its sharding (the random base is dead code)."""
  shardings = sharding.state_shardings(rest_abs, mesh, rules)

  def init():
    model = transformer.Transformer(cfg, adapter_config, rngs=nnx.Rngs(params=seed))
    return nnx.state(model, nnx.Not(adapters_lib.FROZEN_BASE))

  return jax.jit(init, out_shardings=shardings)()


def from_pretrained(path: str, adapter_config: adapters_lib.AdapterConfig | None = None,
                    mesh: jax.sharding.Mesh | None = None, *,
                    model: str | config_lib.ModelConfig | None = None,
                    param_dtype: str | None = None, dtype: str | None = None,
                    seed: int = 0, rules=sharding.DEFAULT_RULES) -> transformer.Transformer:
  """Loads a pretrained Gemma (any layout in LAYOUTS) as a sharded mode_jax model.

  A `model` config with `scan_layers` gets scanned layers whatever the
  checkpoint's layout (loaded looped, then stacked).

  Args:
    path: checkpoint directory (HF, official Flax/Orbax, or mode_jax base).
    adapter_config: if given, adapters are attached and initialised fresh.
    mesh: device mesh (default: the first device alone).
    model: registered config name or ModelConfig instead of the inferred one.
    param_dtype: "float32" or "bfloat16" (default: the stored dtype).
    dtype: activation dtype (default: `param_dtype`).
    seed: adapter initialisation seed (the random streams of
      `build_model(seed=)`).
    rules: logical-axis rules.

  Returns:
    A `Transformer` whose call on int32 tokens [B, L] gives float32 logits
    [B, L, V]; jit its calls inside `sharding.use_mesh(mesh)` so that the
    activations are sharded too.
  """
  path = os.fspath(path)
  cfg = read_config(path, model, param_dtype, dtype)
  if mesh is None:
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
  abstract = build.abstract_model(cfg, adapter_config)
  if detect_layout(path) == BASE:
    checkpoints.restore_base(path, abstract, mesh, rules)
  else:

    def load(m):  # a looped model: every layout maps onto looped paths
      base_abs = nnx.state(m, adapters_lib.FROZEN_BASE)
      nnx.update(m, load_base_state(path, m.config, base_abs, mesh, rules))

    build.load_base(abstract, load, mesh, rules)
  rest_abs = nnx.state(abstract, nnx.Not(adapters_lib.FROZEN_BASE))
  if jax.tree.leaves(rest_abs):
    nnx.update(abstract, _init_adapters(cfg, adapter_config, rest_abs, mesh, rules, seed))
  return abstract
