"""The tiny quickstart base of CPU sweeps: reuse the cached one, or build it.

The base is the one `python -m mode_jax.quickstart --base_steps N` trains
and caches (`mode_jax.quickstart._base_dir` keys it by the quickstart
experiment's model, mixture, lengths and batch, and N), so CPU sweeps and the
quickstart share it.
"""

from __future__ import annotations

import logging

DEFAULT_BASE_STEPS = 200  # the step count of the base cached by earlier quickstarts


def quickstart_base(base_steps: int = DEFAULT_BASE_STEPS, build: bool = True) -> str:
  """Path of the quickstart base checkpoint; trains it first if absent and `build`.

  Args:
    base_steps: full-parameter steps of the base (part of the cache key).
    build: train the base when it is not cached (a few minutes on 2 cores).

  Returns:
    The base checkpoint directory (it may not exist when `build` is False).
  """
  # pylint: disable=g-import-not-at-top,protected-access
  from mode_jax import checkpoints
  from mode_jax import experiment
  from mode_jax import launch
  from mode_jax import quickstart
  from mode_jax import train as train_lib
  launch.parse_gin([quickstart.DEFAULT_GIN], ["MODEL_DIR = 'unused'"])
  cfg = experiment.model_config(launch.query("train.model"))
  lengths = launch.query("train.task_feature_lengths")
  sni_dir = launch.query("train.sni_dir")
  mixture = launch.query("train.mixture_or_task_name")
  batch = launch.query("train.batch_size")
  path = quickstart._base_dir(cfg, mixture, lengths, base_steps, batch, sni_dir)
  if checkpoints.is_base_checkpoint(path) or not build:
    if not checkpoints.is_base_checkpoint(path):
      logging.warning("quickstart base %s is not built yet", path)
    return path
  train_lib.register_data(sni_dir, None, None, True, None, lengths)
  quickstart.build_base(cfg, mixture, lengths, base_steps, batch, path)
  return path
