"""Per-process data shards and constant-time iterator checkpoints (one process)."""

import os

import numpy as np
import pytest
import seqio

from mode_jax.data import config
from mode_jax.data import pipeline
from mode_jax.data import tasks

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")
TASKS = ["task1146_country_capital", "task1498_24hour_to_12hour_clock",
         "task141_odd-man-out_classification_category"]
LENGTHS = {"inputs": 64, "targets": 16}


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
  return tasks.register_sni(
      SAMPLE, config.SniConfig(max_input_tokens=64), cache_dir=str(tmp_path_factory.mktemp("c")),
      tasks=TASKS, prefix="msni", allow_missing=True, case_study=False, test=False)


def _equal(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_shards_are_disjoint_and_cover_every_example(reg):
  for name in reg.tasks:
    task = seqio.get_mixture_or_task(name)
    parts = [[ex["id"] for ex in task.get_dataset(
        LENGTHS, split="train", shuffle=True, seed=3, num_epochs=1,
        shard_info=seqio.ShardInfo(i, 4)).as_numpy_iterator()] for i in range(4)]
    flat = [x for p in parts for x in p]
    assert len(flat) == len(set(flat)) == task.num_input_examples("train"), name
  # The shuffled (training) stream carries no text: it would fill the shuffle
  # buffers and the iterator checkpoints.
  spec = task.get_dataset(LENGTHS, split="train", shuffle=True, seed=3).element_spec
  assert set(spec) == set(tasks.TRAIN_FEATURES)


def test_one_host_reading_n_shards_sees_the_global_batch_of_n_hosts(reg):
  kw = dict(mixture_or_task_name="msni_train", task_feature_lengths=LENGTHS, seed=5)
  hosts = [pipeline.BatchIterator(batch_size=2, shard_id=i, num_shards=2, **kw) for i in range(2)]
  one = pipeline.BatchIterator(batch_size=4, shards_per_host=2, **kw)
  for _ in range(3):
    parts = [next(h) for h in hosts]
    _equal(next(one), {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  with pytest.raises(ValueError, match="shards_per_host"):
    pipeline.BatchIterator(batch_size=3, shards_per_host=2, **kw)


def test_iterator_checkpoint_continues_the_stream(reg, tmp_path):
  kw = dict(mixture_or_task_name="msni_train", task_feature_lengths=LENGTHS, batch_size=3,
            seed=7, shard_id=1, num_shards=2)
  ref = pipeline.BatchIterator(**kw)
  want = [next(ref) for _ in range(6)]
  it = pipeline.BatchIterator(**kw)
  for _ in range(4):
    next(it)
  it.save_checkpoint(str(tmp_path), process_index=1)
  assert next(it) is not None  # moving on after the save does not change the state saved
  resumed = pipeline.BatchIterator(**kw)
  resumed.build()  # restored into the pipeline built before (as the benchmark times it)
  resumed.restore_checkpoint(str(tmp_path), process_index=1)
  assert resumed.state()["batches"] == 4
  for w in want[4:]:
    _equal(next(resumed), w)
  # Position only (no tf.data state): restoring re-reads, same stream.
  light = pipeline.BatchIterator(**kw)
  light.save_iterator = False
  for _ in range(4):
    next(light)
  light.save_checkpoint(str(tmp_path / "light"), process_index=1)
  assert sorted(os.listdir(tmp_path / "light")) == ["process_1.json"]
  reread = pipeline.BatchIterator(**kw)
  reread.restore_checkpoint(str(tmp_path / "light"), process_index=1)
  _equal(next(reread), want[4])
  with pytest.raises(FileNotFoundError, match="process_0"):
    pipeline.BatchIterator(**kw).restore_checkpoint(str(tmp_path), process_index=0)
  with pytest.raises(ValueError, match="shard_id"):
    pipeline.BatchIterator(**{**kw, "shard_id": 0}).restore_checkpoint(
        str(tmp_path), process_index=1)


def test_state_of_another_pipeline_structure_is_re_read_not_restored(reg, tmp_path, monkeypatch,
                                                                     caplog):
  # Before the training stream dropped its text, its shuffle buffers held 8
  # features; that tf.data state, restored into today's pipeline, failed at the
  # first batch ("Expected 3 components but got 8"). It is now detected and the
  # position re-read, and the stream is the same.
  kw = dict(mixture_or_task_name="msni_train", task_feature_lengths=LENGTHS, batch_size=3,
            seed=11)
  ref = pipeline.BatchIterator(**kw)
  want = [next(ref) for _ in range(5)]
  with monkeypatch.context() as m:
    m.setattr(tasks, "TRAIN_FEATURES", tuple(tasks.TRAIN_FEATURES) + (
        "inputs_pretokenized", "targets_pretokenized", "references", "task", "category"))
    old = pipeline.BatchIterator(**kw)
    for _ in range(3):
      next(old)
    old.save_checkpoint(str(tmp_path))
  state = pipeline.BatchIterator(**kw)
  with caplog.at_level("WARNING"):
    state.restore_checkpoint(str(tmp_path))
  assert "another structure" in caplog.text and "re-reading 3 batches" in caplog.text
  assert state.state()["batches"] == 3
  _equal(next(state), want[3])
  # The next checkpoint is a full one of this pipeline, restored without a re-read.
  state.save_checkpoint(str(tmp_path / "new"))
  caplog.clear()
  again = pipeline.BatchIterator(**kw)
  with caplog.at_level("WARNING"):
    again.restore_checkpoint(str(tmp_path / "new"))
  assert "another structure" not in caplog.text
  _equal(next(again), want[4])
