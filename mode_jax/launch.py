"""Gin at the edges: flags, config search path, macros, operative config.

Every entry point (`python -m mode_jax.train`, `.eval`, `.infer`, `.export`)
calls `parse_and_run(fn)`: `--gin_file` (repeatable, searched relative to
`configs/`) and `--gin_bindings` are parsed with the library's configs
registered as gin externals; unknown configurables or parameters and
missing required values fail at start-up naming them. So does a binding of a
macro that no included file uses (the nearest existing macro is suggested),
and `check_arguments` names any setting whose value has the wrong type.
"""

from __future__ import annotations

import argparse
import collections.abc
import difflib
import inspect
import os
import re
import sys
import types
import typing
from typing import Any, Callable, Mapping, Sequence

# Quiet TensorFlow's C++ start-up logs (the data pipeline imports it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import jax  # noqa: E402

from mode_jax import adapters
from mode_jax import files
from mode_jax import models
from mode_jax import optim
from mode_jax import runlock
from mode_jax import sharding

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")

_REGISTERED = False


def register_configurables() -> None:
  """Registers the library's config dataclasses with gin (once)."""
  global _REGISTERED
  if _REGISTERED:
    return
  import importlib  # pylint: disable=g-import-not-at-top
  from mode_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  # Entry points register their configurables on import; gin locks the
  # registry after parsing, so import them all first. The one running as
  # `python -m mode_jax.<name>` is `__main__`: alias it rather than import a
  # second copy, which would register its configurable twice.
  main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  for name in ("train", "eval", "infer", "export"):
    module = f"mode_jax.{name}"
    if main_spec is not None and main_spec.name == module:
      sys.modules.setdefault(module, sys.modules["__main__"])
    importlib.import_module(module)
  gin.external_configurable(models.ModelConfig, module="models")
  gin.external_configurable(models.get_config, module="models")
  gin.external_configurable(models.named_config, module="models")
  gin.external_configurable(adapters.AdapterConfig, module="adapters")
  gin.external_configurable(optim.OptimizerConfig, module="optim")
  gin.external_configurable(sharding.MeshConfig, module="sharding")
  gin.external_configurable(data_config.SniConfig, module="data")
  # The seams of train / evaluate: datasets and evaluators (datasets.py, evaluators.py).
  from mode_jax import datasets  # pylint: disable=g-import-not-at-top
  from mode_jax import evaluators  # pylint: disable=g-import-not-at-top
  gin.external_configurable(datasets.SniDataset, module="datasets")
  gin.external_configurable(evaluators.DecodeEvaluation, module="evaluators")
  gin.external_configurable(evaluators.ValidationLoss, module="evaluators")
  _REGISTERED = True


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  ap = argparse.ArgumentParser()
  ap.add_argument("--gin_file", action="append", default=[],
                  help="gin file, repeatable; relative paths are searched in configs/")
  ap.add_argument("--gin_bindings", action="append", default=[],
                  help="gin binding, repeatable, e.g. TRAIN_STEPS=100")
  ap.add_argument("--multihost", action="store_true",
                  help="call jax.distributed.initialize() (TPU pods, multi-host GPU)")
  ap.add_argument("--restore_step", type=int, default=None,
                  help="resume (train) or evaluate (eval, infer) this checkpoint step "
                       "instead of the latest complete one")
  # With --multihost and none of these, jax.distributed.initialize() detects
  # them (TPU VMs, Slurm, ...); on one machine pass all three to every process.
  ap.add_argument("--coordinator_address", default=None,
                  help="with --multihost: host:port of process 0's coordinator service")
  ap.add_argument("--num_processes", type=int, default=None,
                  help="with --multihost: number of processes")
  ap.add_argument("--process_id", type=int, default=None,
                  help="with --multihost: this process's index, 0 .. num_processes-1")
  args = ap.parse_args(argv)
  given = [f for f in ("coordinator_address", "num_processes", "process_id")
           if getattr(args, f) is not None]
  if given and not args.multihost:
    ap.error(f"--{given[0]} needs --multihost")
  if args.num_processes is not None and args.num_processes < 1:
    ap.error(f"--num_processes must be >= 1, got {args.num_processes}")
  if args.process_id is not None and not (
      0 <= args.process_id < (args.num_processes or args.process_id + 1)):
    ap.error(f"--process_id must be in [0, --num_processes), got {args.process_id}")
  return args


def initialize_distributed(args: argparse.Namespace) -> None:
  """`jax.distributed.initialize` with the flags given (None: auto-detected)."""
  jax.distributed.initialize(coordinator_address=args.coordinator_address,
                             num_processes=args.num_processes, process_id=args.process_id)


def restore_step_bindings(step: int | None) -> list[str]:
  """The gin bindings of `--restore_step` (every entry point reads its own)."""
  if step is None:
    return []
  return [f"train.restore_step = {step}", f"evaluate.checkpoint_step = {step}"]


def _resolve(path: str) -> str:
  for cand in (path, os.path.join(CONFIGS_DIR, path)):
    if os.path.exists(cand):
      return cand
  raise FileNotFoundError(f"gin file {path!r} not found (also looked in {CONFIGS_DIR})")


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files and bindings; a bad name fails here, naming it."""
  register_configurables()
  gin.clear_config()
  cwd = os.getcwd()
  try:
    paths = [os.path.abspath(_resolve(f)) for f in files]
    # Includes ("include 'models/tiny.gin'") resolve against configs/. gin
    # tries the working directory first, and a folder there named like a
    # config folder (runs/, models/) derails its package-resource reader.
    os.chdir(CONFIGS_DIR)
    gin.parse_config_files_and_bindings(paths, [], finalize_config=False)
    in_files = defined_and_used_macros()[0]  # a file's macro may be overridden
    gin.parse_config_files_and_bindings([], list(bindings), finalize_config=True)
  except (ValueError, FileNotFoundError, OSError) as e:
    raise SystemExit(f"gin configuration error: {str(e).splitlines()[0]}") from e
  finally:
    os.chdir(cwd)
  check_macro_bindings(bindings, in_files)


# gin keeps its bindings in `_CONFIG`: {(scope, selector): {param: value}};
# macro `FOO = 1` is {("FOO", "gin.macro"): {"value": 1}} and `%FOO` is a
# ConfigurableReference to "FOO/gin.macro". gin has no public walk of them.
_MACRO = "gin.macro"
_BINDING_NAME = re.compile(r"^\s*([A-Za-z_][\w/.]*)\s*=")


def _macro_refs(value, out: set) -> None:
  stack = [value]
  while stack:
    v = stack.pop()
    if isinstance(v, gin.config.ConfigurableReference):
      if v.configurable.selector == _MACRO:
        out.add(v.scoped_selector.rsplit("/", 1)[0])
    elif isinstance(v, (list, tuple, set)):
      stack += list(v)
    elif isinstance(v, dict):
      stack += list(v.keys()) + list(v.values())


def defined_and_used_macros() -> tuple[set, set]:
  """(macros defined, macros referenced by some binding) in gin's current config."""
  defined, used = set(), set()
  for (scope, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    if selector == _MACRO:
      defined.add(scope)
    for v in params.values():
      _macro_refs(v, used)
  return defined, used


def check_macro_bindings(bindings: Sequence[str], in_files: set = frozenset()) -> None:
  """A binding of a macro no included file uses fails, listing the macros that exist.

  A macro that an included file defines may be overridden even when no
  binding references it (code may read it directly, e.g. the quickstart's
  BASE_SNI_DIR); `in_files` are those macros.

  Raises:
    SystemExit: naming the macro, the nearest used macro and all used ones.
  """
  defined, used = defined_and_used_macros()
  for b in bindings:
    m = _BINDING_NAME.match(b)
    if (not m or "." in m.group(1) or m.group(1) in used or m.group(1) in in_files
        or m.group(1) not in defined):
      continue
    name = m.group(1)
    near = difflib.get_close_matches(name, sorted(used), n=1, cutoff=0.6)
    raise SystemExit(
        f"gin configuration error: binding {b.strip()!r} sets macro {name}, which no "
        f"included gin file uses" + (f"; did you mean {near[0]}?" if near else ".")
        + f" Macros in use: {', '.join(sorted(used))}")


def _macro_of(fn_name: str, param: str) -> str | None:
  """The macro bound to `fn_name.param` in gin's config (None: a plain value)."""
  try:
    value = gin.query_parameter(f"{fn_name}.{param}")
  except (ValueError, KeyError):
    return None
  if isinstance(value, gin.config.ConfigurableReference) and \
      value.configurable.selector == _MACRO:
    return value.scoped_selector.rsplit("/", 1)[0]
  return None


def _matches(value, hint) -> bool:
  """Whether `value` is of the annotated type `hint` (simple, Union, Mapping, Sequence)."""
  if hint is Any or isinstance(hint, typing.TypeVar):
    return True
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, a) for a in args)
  if hint is type(None):
    return value is None
  if origin in (collections.abc.Mapping, dict):
    return isinstance(value, collections.abc.Mapping) and (not args or all(
        _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()))
  if origin in (collections.abc.Sequence, list, tuple):
    if not isinstance(value, (list, tuple)):
      return False
    if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, str]
      return len(value) == len(args) and all(map(_matches, value, args))
    return all(_matches(v, args[0] if args else Any) for v in value)
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(hint, type):
    return isinstance(value, hint)
  return True


def _type_name(hint) -> str:
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    return " or ".join(_type_name(a) for a in typing.get_args(hint))
  if hint is type(None):
    return "None"
  return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else \
      str(hint).replace("typing.", "").replace("collections.abc.", "")


def check_arguments(fn: Callable, values: Mapping[str, Any]) -> None:
  """Checks each argument of a gin-configured entry point against its annotation.

  Called first thing in the entry point (`check_arguments(train, locals())`),
  before any heavy work.

  Raises:
    SystemExit: naming every setting (and its macro) of the wrong type, with
      the expected type and the value found.
  """
  target = inspect.unwrap(fn)
  hints = typing.get_type_hints(target)
  name = target.__name__
  errors = []
  for param, value in values.items():
    hint = hints.get(param)
    if hint is None or value is gin.REQUIRED or _matches(value, hint):
      continue
    macro = _macro_of(name, param)
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    errors.append(f"{name}.{param}" + (f" (macro {macro})" if macro else "")
                  + f" must be {_type_name(hint)}, got {type(value).__name__} {shown}")
  if errors:
    raise SystemExit("invalid setting(s): " + "; ".join(errors))


def check_feature_lengths(lengths: Mapping[str, int], what: str = "TASK_FEATURE_LENGTHS"):
  """{"inputs": N, "targets": M} with positive ints, else a SystemExit naming it."""
  ok = isinstance(lengths, collections.abc.Mapping) and set(lengths) == {"inputs", "targets"}
  if ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                for v in lengths.values()):
    return
  raise SystemExit(f"invalid setting: {what} must be {{'inputs': N, 'targets': M}} with "
                   f"positive ints, got {lengths!r}")


def query(name: str):
  """The evaluated value of a gin parameter (macros and @refs() resolved)."""
  value = gin.query_parameter(name)

  def ev(v):
    if isinstance(v, gin.config.ConfigurableReference):
      return v.scoped_configurable_fn() if v.evaluate else v.scoped_configurable_fn
    if isinstance(v, (list, tuple)):
      return type(v)(ev(x) for x in v)
    if isinstance(v, dict):
      return {k: ev(x) for k, x in v.items()}
    return v

  return ev(value)


def call_configured(fn: Callable):
  """Calls a gin-configured entry point; missing required values name the macro."""
  try:
    return fn()
  except runlock.RunLockHeld as e:  # Not a crash: another trainer owns MODEL_DIR.
    raise SystemExit(f"RunLockHeld: {e}") from e
  except RuntimeError as e:
    msg = str(e)
    if not msg.startswith("Required bindings"):
      raise
    params = re.findall(r"'(\w+)'", msg)
    owner = re.findall(r"`([\w.]+)`", msg)
    owner = owner[0] if owner else fn.__name__
    macros = ", ".join(f"{owner}.{p} (macro {p.upper()})" for p in params)
    raise SystemExit(f"missing required gin value(s): {macros}") from e


def write_operative_config(model_dir: str, name: str = "config.gin") -> str:
  """Writes gin's config (operative once the run started) to model_dir."""
  text = gin.operative_config_str() or gin.config_str()
  if jax.process_index() == 0:
    files.write_text(files.join(model_dir, name), text)
  return text


def default_platform() -> None:
  """With `libtpu` installed (the [tpu] extra) but no TPU on this machine,
  use the CPU without JAX first probing for a TPU, which prints libtpu's
  warnings; JAX_PLATFORMS, a GPU plugin or a TPU device leave JAX's choice."""
  import glob  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return
  if any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                               "jax_rocm7_plugin")):
    return
  jax.config.update("jax_platforms", "cpu")


def parse_and_run(fn: Callable, argv=None):
  """The body of every `__main__`: flags, gin, run."""
  default_platform()
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  if args.multihost:
    initialize_distributed(args)
  if not args.gin_file:
    raise SystemExit("at least one --gin_file is required (see configs/)")
  parse_gin(args.gin_file, args.gin_bindings + restore_step_bindings(args.restore_step))
  result = call_configured(fn)
  if args.multihost:
    # Together and before interpreter teardown: left to exit-time garbage
    # collection, the distributed runtime's teardown waits on timeouts.
    jax.distributed.shutdown()
  return result
