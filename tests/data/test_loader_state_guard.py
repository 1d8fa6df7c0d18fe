"""The tf.data loader refuses a data state written by the Grain loader.

Both loaders write `process_<i>.json` with a "batches" count; read by the
tf.data loader, a Grain state would re-read that many batches of another
data order and the run would silently see other examples.
"""

import json
import os

import pytest

from mode_jax import datasets
from mode_jax.data import config
from mode_jax.data import grain_pipeline
from mode_jax.data import pipeline
from mode_jax.data import tasks

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")
TASK = "task1146_country_capital"
LENGTHS = {"inputs": 64, "targets": 8}


@pytest.fixture(scope="module")
def grain_state(tmp_path_factory):
  """A data state directory written by the real Grain loader after two batches."""
  cache = str(tmp_path_factory.mktemp("cache"))
  reg = tasks.register_sni(SAMPLE, config.SniConfig(max_input_tokens=64), cache_dir=cache,
                           tasks=[TASK], prefix="guard", case_study=False, test=False)
  spec = datasets.BatchSpec(reg.tasks[0], LENGTHS, 4)
  it = grain_pipeline.GrainBatchIterator.from_spec(spec)
  next(it), next(it)
  directory = str(tmp_path_factory.mktemp("data"))
  it.save_checkpoint(directory, 0)
  return spec, directory


def test_restore_checkpoint_of_a_grain_state_names_the_file_and_the_loader(grain_state):
  spec, directory = grain_state
  path = os.path.join(directory, "process_0.json")
  assert not os.path.exists(os.path.join(directory, "process_0.index"))
  it = pipeline.BatchIterator.from_spec(spec)
  with pytest.raises(ValueError, match=r"process_0\.json.*Grain loader.*loader='grain'"):
    it.restore_checkpoint(directory, 0)
  with pytest.raises(ValueError, match="Grain loader"):
    it.restore(json.load(open(path)))


def test_a_tfdata_position_state_still_restores(grain_state):
  """The guard does not catch tf.data's own position-only state."""
  spec, _ = grain_state
  it = pipeline.BatchIterator.from_spec(spec)
  state = dict(it.state(), batches=3)
  it.restore(state)
  assert it.state()["batches"] == 3
