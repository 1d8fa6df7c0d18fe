"""The tiny base of the quickstart, CPU sweeps and the study: reuse the cached one, or build it.

The base is the full model trained for N steps on the mixture of
BASE_SNI_DIR (for the quickstart and the study, `data/sni_full_sample/base`:
26 tasks disjoint from the adapters' tasks). `prepared_base` keys it by the
gin files' model, mixture, lengths, batch, base task files and N, so
`python -m mode_jax.quickstart`, CPU sweeps and the study share it. A
library module: the quickstart (an entry point) and the scripts import it,
never the other way round.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time

from flax import nnx

from mode_jax import checkpoints
from mode_jax import datasets
from mode_jax import experiment
from mode_jax import launch
from mode_jax import optim
from mode_jax import sharding
from mode_jax import trainer

# The step count of the quickstart's base (its --base_steps default), so that
# the study and the quickstart share one cached base.
DEFAULT_BASE_STEPS = 300
DEFAULT_GIN = "experiments/quickstart_tiny.gin"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mode_jax", "quickstart_base")
# The warning of the random initial base, which the base stage trains on purpose.
RANDOM_BASE = ("no BASE_CHECKPOINT",)


class Quiet(logging.Filter):
  """Drops log records whose message contains one of `phrases`."""

  def __init__(self, phrases):
    super().__init__()
    self.phrases = tuple(phrases)

  def filter(self, record):
    msg = record.getMessage()
    return not any(p in msg for p in self.phrases)


def macro(name: str, default):
  """The value of gin macro `name` (default when the gin files do not define it)."""
  try:
    return launch.query(f"%{name}")
  except ValueError:
    return default


def build_base(model_cfg, mixture: str, lengths: dict, steps: int, batch_size: int,
               out_dir: str, seed: int = 0) -> str:
  """Trains the whole base model (no adapters) and writes a base checkpoint."""
  from mode_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  quiet = Quiet(RANDOM_BASE)  # the base is random at first, on purpose
  logging.getLogger().addFilter(quiet)
  try:
    model = experiment.build_model(model_cfg, None, mesh, seed=seed)
  finally:
    logging.getLogger().removeFilter(quiet)
  graphdef, params, astate, frozen = trainer.split_model(model, nnx.Param)
  tx, schedule = optim.make_optimizer(
      optim.OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="cosine",
                            warmup_steps=max(steps // 10, 1), weight_decay=0.01), steps)
  state = trainer.init_state(params, astate, tx)
  data = pipeline.BatchIterator(mixture, lengths, batch_size, split="train", seed=seed + 1)
  t0 = time.time()
  with sharding.use_mesh(mesh):
    step_fn = None
    for step in range(1, steps + 1):
      batch = trainer.place_batch(next(data), mesh)
      if step_fn is None:
        step_fn = trainer.jit_train_step(trainer.make_train_step(graphdef, tx, schedule),
                                         state, frozen, batch, mesh)
      state, metrics = step_fn(state, frozen, batch)
      if step % 50 == 0 or step == steps:
        print(f"[base step {step}/{steps}] loss={float(metrics['loss']):.3f} "
              f"({time.time() - t0:.0f}s)", flush=True)
  model = nnx.merge(graphdef, state["params"], state["adapter_state"], frozen)
  checkpoints.save_base(out_dir, model, source=f"quickstart base: {steps} full-parameter "
                        f"steps on {mixture}")
  return out_dir


def base_dir(model_cfg, mixture, lengths, steps, batch, sni_dir) -> str:
  """The cache directory of a base: a hash of everything that makes it."""
  key = json.dumps([dataclasses.asdict(model_cfg), mixture, dict(lengths), steps, batch,
                    sorted(os.listdir(os.path.join(sni_dir, "tasks")))], sort_keys=True)
  return os.path.join(CACHE, hashlib.sha256(key.encode()).hexdigest()[:12])


def base_sni_dir() -> str:
  """The base's SNI root: gin macro BASE_SNI_DIR, else SNI_DIR (the parsed gin files')."""
  return macro("BASE_SNI_DIR", None) or launch.query("train.sni_dir")


def prepared_base(base_steps: int, build: bool = True) -> str:
  """The cached base checkpoint of the parsed gin files; trains it first if absent.

  The base is trained in full on the mixture `train.mixture_or_task_name` of
  BASE_SNI_DIR, with the model, lengths and batch of the gin files, which
  (with the step count and the task files present) key the cache.

  Args:
    base_steps: full-parameter steps of the base.
    build: train the base when it is not cached.

  Returns:
    The base checkpoint directory (absent when not cached and not `build`).
  """
  q = launch.query
  model_cfg = experiment.model_config(q("train.model"))
  lengths, mixture = q("train.task_feature_lengths"), q("train.mixture_or_task_name")
  batch, sni_dir = q("train.batch_size"), base_sni_dir()
  path = base_dir(model_cfg, mixture, lengths, base_steps, batch, sni_dir)
  if checkpoints.is_base_checkpoint(path):
    print(f"== base model: cached {path}", flush=True)
  elif build:
    print(f"== base model: {base_steps} full-parameter steps on {sni_dir} -> {path}", flush=True)
    # Registers the base's tasks as the mixture; train() later registers
    # SNI_DIR's tasks under the same mixture name for the adapters.
    datasets.SniDataset(sni_dir=sni_dir, allow_missing=True).register(lengths)
    build_base(model_cfg, mixture, lengths, base_steps, batch, path)
  return path


def quickstart_base(base_steps: int = DEFAULT_BASE_STEPS, build: bool = True,
                    gin_files=None) -> str:
  """Path of the base checkpoint; trains it first if absent and `build`.

  Args:
    base_steps: full-parameter steps of the base (part of the cache key).
    build: train the base when it is not cached (a few minutes on 2 cores).
    gin_files: experiment gin files that name the base's data (BASE_SNI_DIR)
      and model (default: the quickstart's).

  Returns:
    The base checkpoint directory (it may not exist when `build` is False).
    The gin files stay parsed (callers may query them).
  """
  # ADAPTER: the base needs none, and experiment gin files may not name one.
  launch.parse_gin(list(gin_files or [DEFAULT_GIN]),
                   ["MODEL_DIR = 'unused'", "ADAPTER = None"])
  path = prepared_base(base_steps, build=build)
  if not checkpoints.is_base_checkpoint(path):
    logging.warning("quickstart base %s is not built yet", path)
  return path
