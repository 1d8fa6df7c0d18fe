"""One real point through the local backend (tiny model, 2 steps), then resume skips it."""

import os

import pytest

from mode_jax.experiments import rundirs
from tests.scripts.conftest import REPO

SNI = os.path.join(REPO, "data", "sni_sample")
VOCAB = os.path.join(REPO, "data", "vocab", "sni_sample_512.model")


@pytest.mark.slow
def test_local_sweep_trains_evaluates_and_resumes(tmp_path, scripts, capsys):
  sweep = scripts("sweep")
  argv = ["--method", "mode", "--experts", "2", "--rank", "2", "--root", str(tmp_path / "sw"),
          "--gin_file", "models/tiny.gin", "--gin_file", "runs/finetune.gin",
          "--gin_file", "runs/eval.gin", "--fail_fast"]
  for b in [f"SNI_DIR = '{SNI}'", f"VOCAB_PATH = '{VOCAB}'", "TRAIN_STEPS = 2",
            "BATCH_SIZE = 8", "INPUT_LENGTH = 48",
            "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8}",
            "train.allow_missing = True", f"train.cache_dir = '{tmp_path / 'cache'}'",
            "train.async_checkpoint = False", "evaluate.allow_missing = True",
            "evaluate.tasks = ['task1146_country_capital']", "evaluate.max_decode_len = 4"]:
    argv += ["--gin_bindings", b]
  assert sweep.main(argv) == 0
  run = tmp_path / "sw" / "mode_m2_R2_p1_s0"
  assert rundirs.is_finished(str(run))
  assert rundirs.read_json(str(run / "train_summary.json"))["step"] == 2
  assert rundirs.latest_eval(str(run))["per_task"].keys() == {"task1146_country_capital"}
  capsys.readouterr()
  assert sweep.main(argv) == 0
  assert "finished, skipped" in capsys.readouterr().out
