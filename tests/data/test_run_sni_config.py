"""`evaluate` without evaluate.sni builds the training run's prompts, not the defaults."""

import os

from mode_jax import datasets
from mode_jax.data import config

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")
TASK = "task1146_country_capital"
LENGTHS = {"inputs": 64, "targets": 8}


def _examples(sni, cache):
  ds = datasets.SniDataset(sni_dir=SAMPLE, sni=sni, allow_missing=True, cache_dir=cache)
  return {e.id: e for e in ds.eval_examples([TASK], "validation")}


def test_evaluation_rebuilds_the_training_runs_prompts_and_split(tmp_path):
  trained = config.SniConfig(max_input_tokens=64, eval_fraction=0.3, num_pos=1)
  run = datasets.SniDataset(sni_dir=SAMPLE, sni=trained, allow_missing=True)
  run.write_run_config(str(tmp_path / "run"), LENGTHS)
  got = datasets.run_sni_config(str(tmp_path / "run"), LENGTHS)
  assert got == trained
  cache = str(tmp_path / "cache")
  want = _examples(trained, cache)
  assert _examples(got, cache).keys() == want.keys()
  # Before: the evaluation's defaults (a 896-token budget, 10% held out)
  # built other prompts and another held-out split than training's.
  default = _examples(None, cache)
  assert default.keys() != want.keys()
  assert all(len(e.input_ids) <= 64 for e in want.values())
  assert any(len(e.input_ids) > 64 for e in default.values())
  # Without a run config (a base-only evaluation): the defaults, at the
  # inputs budget of TASK_FEATURE_LENGTHS.
  fallback = datasets.run_sni_config(str(tmp_path / "none"), LENGTHS)
  assert fallback == config.SniConfig(max_input_tokens=64)
