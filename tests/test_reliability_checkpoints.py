"""Checkpoints that heal: each kind of damage to the newest step falls back, named.

Real Orbax checkpoints of a small train-state-shaped tree (adapters,
optimizer state, data position, gin config) are written by
`RunCheckpointer`; the newest step is then damaged on disk the way a crash,
a full disk or a bad copy damages it, and `restore` must report step, item,
file and problem, move the step aside (never delete it) and use the previous
complete step.
"""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mode_jax import checkpoint_healing as healing
from mode_jax import checkpoints
from mode_jax.data import config as data_config
from mode_jax.data import pipeline
from mode_jax.data import tasks

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "data", "sni_sample")
DATA = {"mixture_or_task_name": "hsni_train", "task_feature_lengths": {"inputs": 32, "targets": 8},
        "batch_size": 2, "seed": 1}


@pytest.fixture(scope="module", autouse=True)
def _registered(sni_cache):
  """A real SNI task: the run checkpoint's data item is its iterator's state."""
  tasks.register_sni(SAMPLE, data_config.SniConfig(max_input_tokens=32),
                     cache_dir=sni_cache,
                     tasks=["task1146_country_capital"], prefix="hsni", allow_missing=True,
                     case_study=False, test=False)


def _state(k: int) -> dict:
  return {"step": jnp.asarray(k, jnp.int32),
          "params": {"lora_a": jnp.full((64, 32), float(k)), "lora_b": jnp.arange(32.0) * k},
          "adapter_state": {"bias": jnp.full((4,), float(k))},
          "opt_state": {"mu": jnp.full((64, 32), 10.0 * k), "count": jnp.asarray(k)}}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """Steps 1, 2 and 3 saved once; each damage case works on a copy (`_save`)."""
  d = tmp_path_factory.mktemp("pristine")
  _write(d)
  return d


@pytest.fixture
def saved(pristine, tmp_path):
  """A private copy of the pristine run directory at tmp_path (steps 1, 2, 3)."""
  shutil.copytree(pristine, tmp_path, dirs_exist_ok=True)
  return tmp_path


def _write(model_dir, steps=(1, 2, 3)):
  ck = checkpoints.RunCheckpointer(str(model_dir), save_interval_steps=1, max_to_keep=None,
                                   async_save=False)
  data = pipeline.BatchIterator(**DATA)
  for k in steps:
    next(data)
    ck.save(k, _state(k), data, f"TRAIN_STEPS = {k}", force=True)
  ck.close()


def _restore(model_dir, step=None, **kw):
  ck = checkpoints.RunCheckpointer(str(model_dir), async_save=False)
  try:
    state, data, gin_text = ck.restore(checkpoints.abstract_like(_state(0)),
                                       pipeline.BatchIterator(**DATA), step, **kw)
    return state, {"batches": data["batches"]}, gin_text
  finally:
    ck.close()


def _files(model_dir, step, item):
  """Data files of an array item, largest first (OCDBT's merged `d/` files)."""
  root = os.path.join(model_dir, "checkpoints", str(step), item)
  out = [p for p in glob.glob(os.path.join(root, "d", "*")) if os.path.isfile(p)]
  return sorted(out, key=os.path.getsize, reverse=True)


def _truncate_adapter_data(d):
  path = _files(d, 3, "adapters")[0]
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  return "adapters", path


def _empty_opt_state_data(d):
  path = _files(d, 3, "opt_state")[0]
  open(path, "wb").close()
  return "opt_state", path


def _delete_array_metadata(d):
  path = os.path.join(d, "checkpoints", "3", "adapters", "_METADATA")
  os.remove(path)
  return "adapters", path


def _garbage_data_item(d):
  path = os.path.join(d, "checkpoints", "3", "data", "process_0.json")
  open(path, "w").write('{"batches": 3, ')
  return "data", path


def _garbage_config_item(d):
  path = os.path.join(d, "checkpoints", "3", "config", "metadata")
  open(path, "wb").write(b"\x00\xff not json")
  return "config", path


def _no_commit_marker(d):
  path = os.path.join(d, "checkpoints", "3", healing.COMMIT_MARKER)
  os.remove(path)
  meta = os.path.join(d, "checkpoints", "3", healing.STEP_METADATA)
  obj = json.load(open(meta))
  obj["commit_timestamp_nsecs"] = None
  json.dump(obj, open(meta, "w"))
  return None, path


DAMAGES = [_truncate_adapter_data, _empty_opt_state_data, _delete_array_metadata,
           _garbage_data_item, _garbage_config_item, _no_commit_marker]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.strip("_"))
def test_damaged_newest_step_falls_back_named_and_moved_aside(saved, tmp_path, capfd, damage):
  item, path = damage(str(tmp_path))
  state, data, gin_text = _restore(tmp_path)
  assert int(state["step"]) == 2 and data == {"batches": 2} and gin_text == "TRAIN_STEPS = 2"
  np.testing.assert_array_equal(np.asarray(state["opt_state"]["mu"]), 20.0)
  err = capfd.readouterr().err
  assert "checkpoint step 3" in err and "restored step 2" in err
  if item:
    assert f"item {item!r}" in err
  # The file is named when the check or the reader can see it; a truncated
  # array file is only seen by TensorStore, which names it too.
  assert path in err or os.path.dirname(path) in err, err
  ckdir = tmp_path / "checkpoints"
  assert not (ckdir / "3").exists()
  aside = [p for p in os.listdir(ckdir) if p.startswith("3.damaged-")]
  assert len(aside) == 1  # Moved, not deleted.
  # The next save of step 3 works again, and a later restore reads it.
  _write(tmp_path, steps=(3,))
  assert int(_restore(tmp_path)[0]["step"]) == 3


def test_half_written_plain_number_step_is_never_complete(saved, tmp_path, capfd):
  ckdir = tmp_path / "checkpoints"
  (ckdir / "7" / "adapters").mkdir(parents=True)
  (ckdir / "7" / "adapters" / "_METADATA").write_text("{}")
  assert healing.check_step(str(ckdir), 7).problem.startswith("missing: the save never")
  state, _, _ = _restore(tmp_path)
  assert int(state["step"]) == 3
  err = capfd.readouterr().err
  assert "checkpoint step 7" in err and healing.COMMIT_MARKER in err
  assert any(p.startswith("7.damaged-") for p in os.listdir(ckdir))


def test_orbax_tmp_directory_is_not_a_step(saved, tmp_path):
  ckdir = tmp_path / "checkpoints"
  os.rename(ckdir / "3", ckdir / "3.orbax-checkpoint-tmp-123")
  assert healing.step_dirs(str(ckdir)) == [1, 2]
  assert int(_restore(tmp_path)[0]["step"]) == 2


def test_explicit_step_restores_it_and_sets_newer_aside(saved, tmp_path):
  state, data, _ = _restore(tmp_path, 1, set_aside_newer=True)
  assert int(state["step"]) == 1 and data == {"batches": 1}
  names = os.listdir(tmp_path / "checkpoints")
  assert sum(n.startswith("2.superseded-") for n in names) == 1
  assert sum(n.startswith("3.superseded-") for n in names) == 1
  assert healing.step_dirs(str(tmp_path / "checkpoints")) == [1]


def test_explicit_damaged_step_raises_and_moves_nothing(saved, tmp_path):
  _garbage_data_item(str(tmp_path))
  with pytest.raises(healing.CheckpointDamaged, match=r"step 3, item 'data'.*process_0.json"):
    _restore(tmp_path, 3)
  assert (tmp_path / "checkpoints" / "3").exists()


def test_changed_restore_target_is_not_damage(saved, tmp_path):
  target = checkpoints.abstract_like(_state(0))
  target["params"]["lora_a"] = jax.ShapeDtypeStruct((64, 16), jnp.float32)
  ck = checkpoints.RunCheckpointer(str(tmp_path), async_save=False)
  with pytest.raises(Exception) as e:
    ck.restore(target, pipeline.BatchIterator(**DATA))
  ck.close()
  assert not isinstance(e.value, (healing.CheckpointDamaged, FileNotFoundError))
  assert healing.step_dirs(str(tmp_path / "checkpoints")) == [1, 2, 3]  # Nothing moved.


def test_reader_falls_back_without_moving(saved, tmp_path, capfd):
  _truncate_adapter_data(str(tmp_path))
  ck = checkpoints.RunCheckpointer(str(tmp_path), async_save=False)
  out = ck.restore_adapters(checkpoints.abstract_like(
      {k: v for k, v in _state(0).items() if k != "opt_state"}))
  ck.close()
  assert int(out["step"]) == 2
  assert "left in place" in capfd.readouterr().err
  assert (tmp_path / "checkpoints" / "3").exists()


def test_every_step_damaged_is_a_named_error(tmp_path):
  _write(tmp_path, steps=(1, 2))
  for k in (1, 2):
    open(os.path.join(tmp_path, "checkpoints", str(k), "data", "process_0.json"), "w").write("x")
  with pytest.raises(FileNotFoundError, match=r"no readable checkpoint.*step 2.*step 1"):
    _restore(tmp_path)
