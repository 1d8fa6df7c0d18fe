"""End to end on the tiny config: a damaged newest checkpoint, read and resumed.

A 4-step run saves steps 2 and 4; step 4's adapter array file is then
truncated. Evaluation (a reader, here while another trainer holds the run
lock) falls back to step 2 and leaves step 4 in place; the trainer resuming
to step 6 reports step 4, moves it aside and continues from step 2.
"""

import glob
import json
import os
import time

import pytest

from mode_jax import launch
from mode_jax import runlock
from mode_jax import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNI = os.path.join(REPO, "data", "sni_sample")
VOCAB = os.path.join(REPO, "data", "vocab", "sni_sample_512.model")
TASK = "task1146_country_capital"


def _bindings(model_dir, cache_dir, steps, extra=()):
  return [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8",
          f"SNI_DIR = '{SNI}'", f"VOCAB_PATH = '{VOCAB}'", "INPUT_LENGTH = 48",
          "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8}", "RANK = 4", "EXPERTS = 4",
          "train.allow_missing = True", f"train.cache_dir = '{cache_dir}'",
          f"MIXTURE_OR_TASK_NAME = 'sni_{TASK}'", "train.checkpoint_every = 2",
          "train.log_every = 1", "train.async_checkpoint = False", *extra]


def _train(model_dir, cache_dir, steps):
  launch.parse_gin(["models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin"],
                   _bindings(model_dir, cache_dir, steps))
  return launch.call_configured(train_lib.train)


@pytest.mark.slow
def test_damaged_step_read_by_eval_and_resumed_by_trainer(tmp_path, capfd):
  from mode_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  run, cache = str(tmp_path / "run"), str(tmp_path / "cache")
  assert _train(run, cache, 4)["latest_checkpoint"] == 4
  assert not os.path.exists(os.path.join(run, runlock.LOCK_NAME))  # Released at the end.
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
