"""The tiny base of CPU sweeps and of the study: reuse the cached one, or build it.

The base is the one `python -m mode_jax.quickstart --base_steps N` trains
and caches: the full model trained on the mixture of BASE_SNI_DIR (for the
quickstart and the study, `data/sni_full_sample/base`: 26 tasks disjoint from
the adapters' tasks). `mode_jax.quickstart.prepared_base` keys it by the gin
files' model, mixture, lengths, batch, base task files and N, so CPU sweeps,
the study and the quickstart share it.
"""

from __future__ import annotations

import logging

# The step count of the quickstart's base (its --base_steps default), so that
# the study and the quickstart share one cached base.
DEFAULT_BASE_STEPS = 300


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
  # pylint: disable=g-import-not-at-top
  from mode_jax import checkpoints
  from mode_jax import launch
  from mode_jax import quickstart
  # ADAPTER: the base needs none, and experiment gin files may not name one.
  launch.parse_gin(list(gin_files or [quickstart.DEFAULT_GIN]),
                   ["MODEL_DIR = 'unused'", "ADAPTER = None"])
  path = quickstart.prepared_base(base_steps, build=build)
  if not checkpoints.is_base_checkpoint(path):
    logging.warning("quickstart base %s is not built yet", path)
  return path
