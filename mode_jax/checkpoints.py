"""All Orbax calls of mode_jax live here.

Two kinds of checkpoint:
- a *base* checkpoint: the frozen base model's `nnx.Param` state (a nested
  dict of arrays keyed by the model's own parameter paths) plus
  `mode_jax_base.json` (the ModelConfig and where the weights came from);
- a *run* checkpoint (see `RunCheckpointer`): adapters, optimizer state, step,
  data position and the operative gin config, never the frozen base; its
  config item also names the layer layout it holds ("looped" or "scanned",
  `models.stacking`), and restoring into the other layout fails clearly.

Loading order, written down once: resume from the run directory; else a
base checkpoint plus fresh adapters; else (tests and the tiny default only)
a random or locally built base.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoint_healing as healing
from mode_jax import files
from mode_jax import sharding
from mode_jax.models import build
from mode_jax.models import config as config_lib
from mode_jax.models import stacking

BASE_METADATA = "mode_jax_base.json"
BASE_STATE = "params"


def _pure(state: nnx.State) -> dict:
  return nnx.to_pure_dict(state)


def is_base_checkpoint(path: str) -> bool:
  return files.exists(files.join(path, BASE_METADATA))


def save_base(path: str, model: nnx.Module, source: str = "") -> None:
  """Writes the model's frozen base parameters and its config (atomically)."""
  path = files.absolute(path)
  # Always the looped layout, so the checkpoint loads into either layout.
  params = _pure(stacking.looped_state(nnx.state(model, adapters_lib.FROZEN_BASE),
                                       model.config.num_layers))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(files.join(path, BASE_STATE), params, force=True)
  # The metadata is written last: its presence marks a complete checkpoint.
  files.write_json(files.join(path, BASE_METADATA),
                   {"config": dataclasses.asdict(model.config.replace(scan_layers=False)),
                    "source": source})


def read_base_config(path: str) -> config_lib.ModelConfig:
  """The ModelConfig stored beside a base checkpoint."""
  meta_path = files.join(path, BASE_METADATA)
  if not files.exists(meta_path):
    raise FileNotFoundError(
        f"{path!r} is not a mode_jax base checkpoint: {BASE_METADATA} not found")
  cfg = json.loads(files.read_text(meta_path))["config"]
  cfg["attention_types"] = tuple(cfg.get("attention_types", ("global",)))
  cfg["scan_layers"] = False  # base checkpoints hold looped layers
  return config_lib.ModelConfig(**cfg)


def _check_tree(expected: dict, found: dict, path: str) -> None:
  """Raises a ValueError naming the first missing, unexpected or misshapen array."""
  exp = {"/".join(map(str, k)): v for k, v in _flatten(expected)}
  got = {"/".join(map(str, k)): v for k, v in _flatten(found)}
  missing = sorted(set(exp) - set(got))
  extra = sorted(set(got) - set(exp))
  if missing:
    raise ValueError(f"base checkpoint {path!r} lacks parameter {missing[0]!r}"
                     f" ({len(missing)} missing)")
  if extra:
    raise ValueError(f"base checkpoint {path!r} has unexpected parameter {extra[0]!r}"
                     f" ({len(extra)} unexpected)")
  for k, e in exp.items():
    g = got[k]
    if tuple(g.shape) != tuple(e.shape):
      raise ValueError(f"base checkpoint {path!r}: parameter {k!r} has shape "
                       f"{tuple(g.shape)}, expected {tuple(e.shape)}")
    if np.dtype(g.dtype) != np.dtype(e.dtype) and not (
        jax.numpy.issubdtype(g.dtype, jax.numpy.floating)
        and jax.numpy.issubdtype(e.dtype, jax.numpy.floating)):  # floats are cast on restore
      raise ValueError(f"base checkpoint {path!r}: parameter {k!r} has dtype "
                       f"{np.dtype(g.dtype)}, expected {np.dtype(e.dtype)}")


def _flatten(tree: dict):
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(tuple(getattr(p, "key", getattr(p, "idx", p)) for p in kp), v) for kp, v in leaves]


def restore_base(path: str, model: nnx.Module, mesh: jax.sharding.Mesh | None = None,
                 rules=sharding.DEFAULT_RULES) -> None:
  """Loads base parameters into `model` (concrete or abstract), in place.

  Each array is read directly into its logical-axis sharding on `mesh` (or
  the default device), never gathered on one device, in the model's
  parameter dtype (a float32 checkpoint loads into a bfloat16 base). Shape
  or (non-float) dtype mismatches name the offending parameter.
  """
  path = files.absolute(path)
  state_dir = files.join(path, BASE_STATE)
  if not files.exists(state_dir):
    raise FileNotFoundError(f"base checkpoint {path!r} not found (no {BASE_STATE}/ inside)")
  if mesh is None:
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
  if getattr(model.config, "scan_layers", False):  # stored looped: load, then stack
    build.load_base(model, lambda m: restore_base(path, m, mesh, rules), mesh, rules)
    return
  base_state = nnx.state(model, adapters_lib.FROZEN_BASE)
  shardings = sharding.state_shardings(base_state, mesh, rules)
  target = jax.tree.map(
      lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
      _pure(base_state), _pure(shardings))
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(state_dir)
    found = getattr(meta, "item_metadata", meta)
    found = getattr(found, "tree", found)
    _check_tree(target, found, path)
    restored = ckptr.restore(state_dir, target)
  # Orbax reads into the target dtype (a float32 base into a bfloat16 model);
  # make sure of it rather than hold a wider copy.
  restored = jax.tree.map(lambda x, t: x if x.dtype == t.dtype else x.astype(t.dtype),
                          restored, target)
  nnx.replace_by_pure_dict(base_state, restored)
  nnx.update(model, base_state)


# --- The run checkpoint's data item: one iterator state per process. ---------


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves and restores each process's data iterator inside the run checkpoint.

  Every process calls `save` within Orbax's multi-process save, on the same
  temporary step directory, and writes its own files `data/process_<i>.*`
  (`BatchIterator.save_checkpoint`: the tf.data iterator state). Orbax
  renames the step directory only after all processes finished, so a kill
  mid-save leaves the previous step complete, with every process's state.
  `restore` continues the iterator in place: constant time, whatever the step.
  """

  def save(self, directory, args: "DataSave"):
    args.iterator.save_checkpoint(str(directory), jax.process_index())

  def restore(self, directory, args: "DataRestore"):
    args.iterator.restore_checkpoint(str(directory), jax.process_index())
    return args.iterator.state()

  def metadata(self, directory):
    return None


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  iterator: Any  # a data.pipeline.BatchIterator


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  iterator: Any  # a data.pipeline.BatchIterator, continued in place

# ------------------------------------------------------------------------------


class RunCheckpointer:
  """Periodic, atomic, asynchronous run checkpoints in `<model_dir>/checkpoints`.

  Each checkpoint holds the train state (step, adapter parameters, optimizer
  state, adapter state such as balancing biases), every process's data
  iterator state and the operative gin config; never the frozen base. All
  processes save together (Orbax's multi-process save: each writes its
  shards of the arrays and its own data state; process 0 the JSON). Orbax
  writes each step to a temporary directory and renames it when complete,
  so a kill mid-save leaves the previous checkpoint as the latest complete
  one. The restore
  methods heal (`checkpoint_healing.heals`): without a step they use the
  newest step that reads completely; damaged or incomplete steps are
  reported and skipped, and `restore` (the trainer's) moves them aside.
  """

  def __init__(self, model_dir: str, *, save_interval_steps: int = 1000,
               max_to_keep: int | None = 3, async_save: bool = True):
    self.directory = files.join(files.absolute(model_dir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps, max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_names=("adapters", "opt_state", "data", "config"))

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would write (interval, and not already saved)."""
    return self.manager.should_save(step)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: dict, data: Any, config: str = "",
           force: bool = False) -> bool:
    """Saves when the interval says so (or `force`); returns whether it did.

    `state` is the train state {"step", "params", "opt_state",
    "adapter_state"}; the adapters and the optimizer state are separate
    items so evaluation can read the adapters alone. `data` is this
    process's `BatchIterator`; its state is written before `save` returns.
    None writes no data item: such a step serves evaluation and export, and
    `restore` (resuming training) refuses it.
    """
    adapters = {k: v for k, v in state.items() if k != "opt_state"}
    items = {"adapters": ocp.args.StandardSave(adapters),
             "opt_state": ocp.args.StandardSave(state["opt_state"]),
             "config": ocp.args.JsonSave({"gin": config,
                                          "layers": stacking.layout_of(state["params"])})}
    if data is not None:
      items["data"] = DataSave(data)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def _step(self, step):
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory!r}")
    return step

  @healing.heals(move_aside=False)
  def layout(self, step: int | None = None) -> str:
    """The layer layout `step` holds (default: latest): stacking.LOOPED or SCANNED."""
    return self._layout(self._step(step))

  def _layout(self, step: int) -> str:
    out = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return out.config.get("layers") or stacking.LOOPED  # older checkpoints: looped

  def _check_layout(self, step: int, abstract: dict) -> None:
    """Raises a ValueError when the checkpoint's layer layout is not the target's."""
    stored = self._layout(step)
    want = stacking.layout_of(abstract.get("params", {}))
    if want is not None and stored != want:
      raise ValueError(
          f"run checkpoint {self.directory!r} step {step} holds {stored} layers but the model "
          f"has {want} layers: set ModelConfig.scan_layers={stored == stacking.SCANNED} (gin: "
          "models.named_config.scan_layers) to resume or evaluate it")

  @healing.heals(move_aside=True)
  def restore(self, abstract_state: dict, data: Any,
              step: int | None = None) -> tuple[Any, dict, str]:
    """Restores (train state, data state, gin config) of `step` (default: latest).

    `data` (this process's `BatchIterator`) is continued in place; its
    `state()` is returned.
    """
    step = self._step(step)
    self._check_layout(step, abstract_state)
    adapters = {k: v for k, v in abstract_state.items() if k != "opt_state"}
    out = self.manager.restore(step, args=ocp.args.Composite(
        adapters=ocp.args.StandardRestore(adapters),
        opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
        data=DataRestore(data), config=ocp.args.JsonRestore()))
    state = dict(out.adapters, opt_state=out.opt_state)
    return state, dict(out.data), out.config.get("gin", "")

  @healing.heals(move_aside=False)
  def restore_adapters(self, abstract_adapters: dict, step: int | None = None) -> dict:
    """Restores {"step", "params", "adapter_state"} only (evaluation, export)."""
    step = self._step(step)
    self._check_layout(step, abstract_adapters)
    out = self.manager.restore(step, args=ocp.args.Composite(
        adapters=ocp.args.StandardRestore(abstract_adapters)))
    return dict(out.adapters)

  @healing.heals(move_aside=False)
  def restore_config(self, step: int | None = None) -> str:
    """The gin config text saved with `step` (default: latest)."""
    out = self.manager.restore(self._step(step), args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))
    return out.config.get("gin", "")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, as restore targets."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def save_adapters(path: str, adapter_state: Any) -> None:
  """Writes an adapter-only checkpoint (trained and non-trained adapter state)."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(files.absolute(path), adapter_state, force=True)


def restore_adapters(path: str, abstract_state: Any) -> Any:
  """Reads an adapter-only checkpoint into the structure of `abstract_state`."""
  path = files.absolute(path)
  if not files.exists(path):
    raise FileNotFoundError(f"adapter checkpoint {path!r} not found")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract_state)
