"""Gin at the edges: flags, config search path, macros, operative config.

Every entry point (`python -m mode_jax.train`, `.eval`, `.infer`, `.export`)
calls `parse_and_run(fn)`: `--gin_file` (repeatable, searched relative to
`configs/`) and `--gin_bindings` are parsed with the library's configs
registered as gin externals; unknown configurables or parameters and
missing required values fail at start-up naming them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Sequence

# Quiet TensorFlow's C++ start-up logs (the data pipeline imports it).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import jax  # noqa: E402

from mode_jax import adapters
from mode_jax import files
from mode_jax import models
from mode_jax import optim
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
  gin.external_configurable(adapters.AdapterConfig, module="adapters")
  gin.external_configurable(optim.OptimizerConfig, module="optim")
  gin.external_configurable(sharding.MeshConfig, module="sharding")
  gin.external_configurable(data_config.SniConfig, module="data")
  _REGISTERED = True


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
  ap = argparse.ArgumentParser()
  ap.add_argument("--gin_file", action="append", default=[],
                  help="gin file, repeatable; relative paths are searched in configs/")
  ap.add_argument("--gin_bindings", action="append", default=[],
                  help="gin binding, repeatable, e.g. TRAIN_STEPS=100")
  ap.add_argument("--multihost", action="store_true",
                  help="call jax.distributed.initialize() (TPU pods, multi-host GPU)")
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
    gin.parse_config_files_and_bindings(paths, list(bindings), finalize_config=True)
  except (ValueError, FileNotFoundError, OSError) as e:
    raise SystemExit(f"gin configuration error: {str(e).splitlines()[0]}") from e
  finally:
    os.chdir(cwd)


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


def parse_and_run(fn: Callable, argv=None):
  """The body of every `__main__`: flags, gin, run."""
  args = parse_flags(sys.argv[1:] if argv is None else argv)
  if args.multihost:
    initialize_distributed(args)
  if not args.gin_file:
    raise SystemExit("at least one --gin_file is required (see configs/)")
  parse_gin(args.gin_file, args.gin_bindings)
  result = call_configured(fn)
  if args.multihost:
    # Together and before interpreter teardown: left to exit-time garbage
    # collection, the distributed runtime's teardown waits on timeouts.
    jax.distributed.shutdown()
  return result
