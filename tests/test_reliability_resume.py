"""End to end on the tiny config: a damaged newest checkpoint, read and resumed.

The suite's tiny run (tests/tiny.py: 4 steps, checkpoints 2 and 4) is
copied and its step 4's adapter array file truncated. Evaluation (a
reader, here while another trainer holds the run lock) falls back to step 2 and leaves step 4 in place; the trainer resuming
to step 6 reports step 4, moves it aside and continues from step 2.
"""

import glob
import json
import os
import time

import pytest

from mode_jax import launch
from mode_jax import runlock

from tests import tiny

TASK = tiny.TASKS[0]


def _bindings(model_dir, cache_dir, steps, extra=()):
  return tiny.bindings(model_dir, cache_dir, steps, extra)


def _train(model_dir, cache_dir, steps):
  return tiny.train(model_dir, cache_dir, steps)


@pytest.mark.slow
def test_damaged_step_read_by_eval_and_resumed_by_trainer(tiny_run, copy_run, capfd):
  from mode_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  assert tiny_run["summary"]["latest_checkpoint"] == 4
  assert not os.path.exists(os.path.join(tiny_run["model_dir"], runlock.LOCK_NAME))  # Released.
  run, cache = copy_run(tiny_run["model_dir"]), tiny_run["cache"]
  assert eval_lib.training_allow_missing(run)  # Eval applies the run's allow_missing.
  data = max(glob.glob(os.path.join(run, "checkpoints", "4", "adapters", "d", "*")),
             key=os.path.getsize)
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 2)

  # Another trainer (on another host) holds the directory: eval may still read it.
  lock = {"host": "elsewhere", "pid": 1, "token": "t", "started": time.time(),
          "refreshed": time.time()}
  with open(os.path.join(run, runlock.LOCK_NAME), "w") as f:
    json.dump(lock, f)
  launch.parse_gin(["models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin",
                    "runs/eval.gin"],
                   _bindings(run, cache, 4, [f"evaluate.tasks = ['{TASK}']",
                                             "evaluate.max_decode_len = 4"]))
  metrics = launch.call_configured(eval_lib.evaluate)
  assert metrics["step"] == 2
  err = capfd.readouterr().err
  assert "checkpoint step 4, item 'adapters'" in err and data in err and "left in place" in err
  assert os.path.isdir(os.path.join(run, "checkpoints", "4"))
  with pytest.raises(SystemExit, match="RunLockHeld: .*host 'elsewhere', pid 1"):
    _train(run, cache, 6)
  os.remove(os.path.join(run, runlock.LOCK_NAME))

  summary = _train(run, cache, 6)
  out = capfd.readouterr()
  assert summary["step"] == 6 and summary["latest_checkpoint"] == 6
  assert "checkpoint step 4, item 'adapters'" in out.err and "restored step 2" in out.err
  assert f"resumed from {os.path.join(run, 'checkpoints')} at step 2" in out.out
  names = os.listdir(os.path.join(run, "checkpoints"))
  assert sum(n.startswith("4.damaged-") for n in names) == 1
  assert not os.path.exists(os.path.join(run, runlock.LOCK_NAME))


def test_restore_step_flag_binds_train_and_eval():
  args = launch.parse_flags(["--gin_file=x.gin", "--restore_step=2"])
  assert args.restore_step == 2
  launch.parse_gin(["models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin",
                    "runs/eval.gin"],
                   _bindings("x", "y", 4) + launch.restore_step_bindings(args.restore_step))
  assert launch.query("train.restore_step") == 2
  assert launch.query("evaluate.checkpoint_step") == 2
