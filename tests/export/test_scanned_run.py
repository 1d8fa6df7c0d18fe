"""A scanned run checkpoint reads in the tools as its looped twin does.

Two run checkpoints hold the same adapters, one in the looped layout and one
stacked (`ModelConfig.scan_layers=True`). The export formats (orbax, torch,
PEFT) and the analyses' readers (`experiments.restore`: adapter weights for
scripts/redundancy.py, the trained model for scripts/routing.py) must give
the same output for both.
"""

import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from mode_jax import adapters
from mode_jax import checkpoints
from mode_jax import export as export_lib
from mode_jax import models
from mode_jax import optim
from mode_jax import trainer
from mode_jax.experiments import restore
from mode_jax.models import stacking

CFG = models.get_config("tiny")
KINDS = {"lora": dict(kind="lora", rank=4),
         "mode": dict(kind="mode", rank=4, num_experts=3, expert_rank=2)}


def _runs(tmp_path, kind: str) -> tuple[str, dict, adapters.AdapterConfig]:
  """A base checkpoint and two runs (looped, scanned) holding the same random adapters."""
  acfg = adapters.AdapterConfig(**KINDS[kind])
  base = str(tmp_path / "base")
  looped = models.build_model(CFG, acfg, seed=3)
  checkpoints.save_base(base, looped)
  rng = np.random.default_rng(0)
  state = nnx.state(looped, adapters.ADAPTER)
  nnx.update(looped, jax.tree.map(  # non-zero trained and balancing state (not the seeds)
      lambda x: jax.numpy.asarray(rng.normal(0, 0.2, x.shape), x.dtype)
      if np.issubdtype(x.dtype, np.floating) else x, state))
  tx, _ = optim.make_optimizer(optim.OptimizerConfig(), 10)
  dirs = {}
  for scan in (False, True):
    _, params, astate, _ = trainer.split_model(looped)
    if scan:
      params, astate = stacking.stack(params), stacking.stack(astate)
    state = dict(trainer.init_state(params, astate, tx), step=jax.numpy.asarray(7, np.int32))
    dirs[scan] = str(tmp_path / ("scanned" if scan else "looped"))
    ck = checkpoints.RunCheckpointer(dirs[scan], async_save=False)
    ck.save(7, state, None, force=True)
    ck.close()
  return base, dirs, acfg


def _read_export(path: str) -> dict:
  """{file: content} of an export: arrays for tensors, parsed JSON without paths."""
  out = {}
  for name in sorted(os.listdir(path)):
    full = os.path.join(path, name)
    if name.endswith(".safetensors"):
      out[name] = safetensors.numpy.load_file(full)
    elif name.endswith(".json"):
      doc = json.load(open(full))
      for k in ("base_checkpoint", "files"):
        doc.pop(k, None)
      out[name] = doc
  return out


def _assert_same(a, b, where=""):
  if isinstance(a, dict):
    assert sorted(a) == sorted(b), where
    for k in a:
      _assert_same(a[k], b[k], f"{where}/{k}")
  elif isinstance(a, np.ndarray):
    np.testing.assert_array_equal(a, b, err_msg=where)
  else:
    assert a == b, where


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_scanned_run_exports_as_its_looped_twin(tmp_path, kind):
  base, dirs, acfg = _runs(tmp_path, kind)
  formats = ["orbax", "torch"] + (["peft"] if kind == "lora" else [])
  for fmt in formats:
    got = {}
    for scan, d in dirs.items():
      out = export_lib.export(model_dir=d, model=CFG.replace(scan_layers=scan), adapter=acfg,
                              base_checkpoint=base, format=fmt,
                              export_dir=str(tmp_path / f"{fmt}_{scan}"))
      got[scan] = _read_export(out)
      if fmt == "orbax":  # the adapters checkpoint itself, read back looped
        model = models.abstract_model(CFG, acfg)
        _, params, astate, _ = trainer.split_model(model)
        back = checkpoints.restore_adapters(
            os.path.join(out, export_lib.ADAPTERS),
            checkpoints.abstract_like({"params": params, "adapter_state": astate}))
        got[scan]["adapters"] = {"/".join(map(str, p)): np.asarray(v.get_value())
                                 for p, v in back["params"].flat_state()}
    assert got[True]["manifest.json"]["step"] == 7
    assert not got[True]["manifest.json"]["model"]["scan_layers"]  # written looped
    _assert_same(got[True], got[False], fmt)


def test_the_analyses_read_a_scanned_run_as_its_looped_twin(tmp_path):
  base, dirs, acfg = _runs(tmp_path, "mode")
  step_l, loop = restore.adapter_weights(dirs[False], CFG, acfg)
  # The analysis may be configured either way: the checkpoint says its layout.
  for cfg in (CFG, CFG.replace(scan_layers=True)):
    step_s, scan = restore.adapter_weights(dirs[True], cfg, acfg)
    assert step_s == step_l == 7
    assert sorted(scan, key=str) == sorted(loop, key=str)
    assert all(p[0] == "layers" and isinstance(p[1], int) for p in scan if p[0] == "layers")
    for p in loop:
      np.testing.assert_array_equal(scan[p], loop[p], err_msg=str(p))
  settings = {"model": CFG, "adapter": acfg, "base_checkpoint": base}
  toks = jax.numpy.asarray(np.random.default_rng(1).integers(3, 500, (2, 9)), np.int32)
  logits = {}
  for scan, d in dirs.items():
    model, _ = restore.trained_model(d, settings)
    assert not model.config.scan_layers
    logits[scan] = np.asarray(model(toks))
  np.testing.assert_allclose(logits[True], logits[False], rtol=1e-6, atol=1e-6)
