"""Reading trained adapters back from a run directory (analyses).

`run_settings` re-parses the gin files and bindings the sweep saved in
`point.json`, so an analysis sees exactly the run's model, adapter, base
checkpoint and data settings.
"""

from __future__ import annotations

import jax
import numpy as np

from mode_jax import checkpoints
from mode_jax import experiment
from mode_jax import files
from mode_jax import launch
from mode_jax import models
from mode_jax import sharding
from mode_jax import trainer
from mode_jax.experiments import rundirs


def run_settings(model_dir: str) -> dict:
  """{"model", "adapter", "base_checkpoint", "sni_dir", "vocab_path", "lengths", "sni"}.

  Raises:
    FileNotFoundError: the run has no point.json (not made by scripts/sweep.py).
  """
  point = rundirs.read_json(files.join(model_dir, rundirs.POINT_FILE))
  if point is None:
    raise FileNotFoundError(f"{model_dir}: no {rundirs.POINT_FILE} (not a sweep run)")
  launch.parse_gin(point["gin_files"], point["bindings"])
  q = launch.query
  return {"model": experiment.model_config(q("train.model")), "adapter": q("train.adapter"),
          "base_checkpoint": q("train.base_checkpoint"), "sni_dir": q("train.sni_dir"),
          "vocab_path": q("train.vocab_path"), "lengths": q("train.task_feature_lengths"),
          "sni": q("train.sni")}


def adapter_weights(model_dir: str, model_cfg, adapter_cfg,
                    step: int | None = None) -> tuple[int, dict[tuple, np.ndarray]]:
  """(step, {param path: array}) of the run's adapter parameters (latest step)."""
  model = models.abstract_model(model_cfg, adapter_cfg)
  _, params, astate, _ = trainer.split_model(model)
  target = {"step": jax.ShapeDtypeStruct((), np.int32), "params": params,
            "adapter_state": astate}
  ck = checkpoints.RunCheckpointer(model_dir, async_save=False)
  try:
    out = ck.restore_adapters(checkpoints.abstract_like(target), step)
  finally:
    ck.close()
  return int(out["step"]), {p: np.asarray(v.get_value()) for p, v in out["params"].flat_state()}


def trained_model(model_dir: str, settings: dict | None = None):
  """The run's model (base + restored adapters) as an nnx module, and its settings."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  s = settings or run_settings(model_dir)
  mesh = sharding.make_mesh()
  model = experiment.build_model(s["model"], s["adapter"], mesh,
                                 base_checkpoint=s["base_checkpoint"])
  graphdef, params, astate, frozen = trainer.split_model(model)
  ck = checkpoints.RunCheckpointer(model_dir, async_save=False)
  try:
    out = ck.restore_adapters(checkpoints.abstract_like(
        {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params,
         "adapter_state": astate}))
  finally:
    ck.close()
  return nnx.merge(graphdef, out["params"], out["adapter_state"], frozen), s
