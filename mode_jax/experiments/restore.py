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
from mode_jax.models import build
from mode_jax.models import stacking
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
  """(step, {param path: array}) of the run's adapter parameters (latest step).

  Paths are looped (`("layers", i, ...)`) whichever layout the run trained in.
  """
  ck = checkpoints.RunCheckpointer(model_dir, async_save=False)
  try:
    cfg = _in_layout(model_cfg, ck, step)
    _, params, astate, _ = trainer.split_model(models.abstract_model(cfg, adapter_cfg))
    target = {"step": jax.ShapeDtypeStruct((), np.int32), "params": params,
              "adapter_state": astate}
    out = ck.restore_adapters(checkpoints.abstract_like(target), step)
  finally:
    ck.close()
  params = stacking.looped_state(out["params"], cfg.num_layers)
  return int(out["step"]), {p: np.asarray(v.get_value()) for p, v in params.flat_state()}


def _in_layout(model_cfg, ck: checkpoints.RunCheckpointer, step: int | None = None):
  """`model_cfg` with the layer layout (looped or scanned) of the run's checkpoint."""
  return model_cfg.replace(scan_layers=ck.layout(step) == stacking.SCANNED)


def trained_model(model_dir: str, settings: dict | None = None):
  """The run's model (base + restored adapters) as an nnx module, and its settings."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  s = settings or run_settings(model_dir)
  mesh = sharding.make_mesh()
  ck = checkpoints.RunCheckpointer(model_dir, async_save=False)
  try:
    model = experiment.build_model(_in_layout(s["model"], ck), s["adapter"], mesh,
                                   base_checkpoint=s["base_checkpoint"])
    graphdef, params, astate, frozen = trainer.split_model(model)
    out = ck.restore_adapters(checkpoints.abstract_like(
        {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params,
         "adapter_state": astate}))
  finally:
    ck.close()
  # Looped, whichever layout the run trained in: analyses address layers by index.
  return build.looped(nnx.merge(graphdef, out["params"], out["adapter_state"], frozen)), s
