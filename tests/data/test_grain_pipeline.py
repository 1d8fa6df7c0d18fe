"""The Grain loader: seqio's rows, SeqIO's rates, shards, O(1) resume, errors."""

import collections
import dataclasses
import json
import os

import numpy as np
import pytest
import seqio

from mode_jax import datasets
from mode_jax.data import arrayrecord
from mode_jax.data import config
from mode_jax.data import grain_pipeline
from mode_jax.data import index_mixture
from mode_jax.data import pipeline
from mode_jax.data import tasks

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")
TASKS = ["task1146_country_capital", "task1498_24hour_to_12hour_clock", "task111",
         "task141_odd-man-out_classification_category"]
LENGTHS = {"inputs": 192, "targets": 32}
CFG = config.SniConfig(max_input_tokens=192)
MIX = "grsni_train"


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("cache"))
  tasks.register_sni(SAMPLE, CFG, cache_dir=cache, tasks=TASKS, prefix="grcap",
                     allow_missing=True, case_study=False, test=False, mixing_cap=30)
  return tasks.register_sni(SAMPLE, CFG, cache_dir=cache, tasks=TASKS, prefix="grsni",
                            allow_missing=True, case_study=False, test=False)


def spec(name=MIX, batch_size=4, **kw):
  return datasets.BatchSpec(name, kw.pop("lengths", LENGTHS), batch_size, **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def seqio_rows(name, lengths, pack=False):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split="train", shuffle=False,
                                                   num_epochs=1)
  ds = seqio.DecoderFeatureConverter(pack=pack)(ds, task_feature_lengths=lengths)
  return list(ds.as_numpy_iterator())


def source_ids(name, split="train"):
  """Instance ids of a task from its TFRecord through seqio's source (not the loader)."""
  ds = seqio.get_mixture_or_task(name).source.get_dataset(split, shuffle=False)
  return [ex["id"].decode() for ex in ds.as_numpy_iterator()]


@pytest.mark.parametrize("lengths,pack", [(LENGTHS, False), ({"inputs": 48, "targets": 4}, False),
                                          ({"inputs": 48, "targets": 16}, True)])
def test_rows_equal_seqio_converter(reg, lengths, pack):
  """Same examples, same rows as seqio's Task + DecoderFeatureConverter.

  Also when trimming inputs and targets, and packed (seqio's windows and
  next-fit packer: tasks of 70 and 69 examples span two windows of 64).
  """
  for name in reg.tasks[:2]:
    want = seqio_rows(name, lengths, pack)
    got = list(grain_pipeline.GrainBatchIterator(
        spec(name, 5, lengths=lengths, shuffle=False, num_epochs=1, pack=pack)))
    assert [b["decoder_target_tokens"].shape[0] for b in got[:-1]] == [5] * (len(got) - 1)
    assert sum(b["decoder_target_tokens"].shape[0] for b in got) == len(want)
    rows = {k: np.concatenate([b[k] for b in got]) for k in got[0]}
    assert set(rows) == set(want[0])
    for k in rows:
      assert rows[k].dtype == np.int32 and rows[k].shape == (len(want), sum(lengths.values()))
      np.testing.assert_array_equal(rows[k], np.stack([w[k] for w in want]), err_msg=k)


def test_one_pass_has_every_example_as_the_tfdata_loader(reg):
  """An evaluation pass (num_epochs=1) over the mixture: the tf.data loader's rows, reordered."""
  got = list(grain_pipeline.GrainBatchIterator(spec(batch_size=8, shuffle=True, num_epochs=1)))
  want = list(pipeline.BatchIterator.from_spec(spec(batch_size=8, shuffle=False, num_epochs=1)))
  rows = lambda bs: sorted(map(bytes, np.concatenate(  # noqa: E731
      [np.concatenate([b[k] for k in sorted(b)], 1) for b in bs])))
  assert rows(got) == rows(want)


def cycle_task_counts(reg, name):
  it = grain_pipeline.GrainBatchIterator(spec(name, 10))
  it.build()
  w = it._sources[0].mixture.cycle_length  # pylint: disable=protected-access
  ids = [i for b in range(-(-w // 10)) for i in it.example_ids(b)][:w]
  return collections.Counter(i.split("-")[0] for i in ids), w


@pytest.mark.parametrize("name", ["grsni_train", "grcap_train"])
def test_mixture_counts_are_the_seqio_rates(reg, name):
  """Over one cycle each task appears exactly its SeqIO rate (capped or not) times."""
  mix = seqio.get_mixture_or_task(name)
  want = {t.name: int(mix.get_rate(t)) for t in mix.tasks}
  counts, w = cycle_task_counts(reg, name)
  assert w == sum(want.values())
  by_id = {t.name: collections.Counter(i.split("-")[0] for i in source_ids(t.name)).most_common(
      1)[0][0] for t in mix.tasks}
  assert {t: counts[by_id[t]] for t in want} == want
  if name == "grcap_train":
    assert max(want.values()) == 30 and min(want.values()) < 30  # the cap is in force


def test_mixture_draws_pass_chi_square_against_rates():
  """Within cycles the task draws follow rate / sum (chi-square, and a biased sampler fails)."""
  rates = np.array([5., 50., 200., 745.])
  mix = index_mixture.IndexMixture([3, 40, 100, 1000], rates, seed=7)
  draws = np.array([mix(p)[0] for p in range(1, 20000, 7)])  # spans several cycles
  expected = len(draws) * rates / rates.sum()
  chi2 = (((np.bincount(draws, minlength=4) - expected) ** 2) / expected).sum()
  assert chi2 < 16.3  # p = 0.001 at 3 degrees of freedom
  biased = np.bincount(draws[draws != 3], minlength=4)  # as if one task were never drawn
  assert (((biased - expected) ** 2) / expected).sum() > 16.3


def test_index_mixture_epochs_use_every_example_once():
  mix = index_mixture.IndexMixture([7, 3], [7, 3], seed=1)
  per_cycle = [sorted(mix(p) for p in range(c * 10, c * 10 + 10)) for c in range(3)]
  assert all(c == sorted([(0, i) for i in range(7)] + [(1, i) for i in range(3)])
             for c in per_cycle)
  assert [mix(p) for p in range(10)] != [mix(p) for p in range(10, 20)]  # reshuffled


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_shards_disjoint_and_complete(reg, num_shards):
  every = sorted(i for t in reg.tasks for i in source_ids(t))
  seen = []
  for shard in range(num_shards):
    it = grain_pipeline.GrainBatchIterator(spec(batch_size=8, shard_id=shard,
                                                num_shards=num_shards, num_epochs=1))
    n = len(list(it))  # the batches themselves, read through grain
    ids = [i for b in range(n) for i in it.example_ids(b)]
    assert len(set(ids)) == len(ids)
    seen += ids
  assert sorted(seen) == every  # disjoint (no id twice) and complete


def test_shards_per_host_reads_the_global_batch(reg):
  one = take(grain_pipeline.GrainBatchIterator(spec(batch_size=8, shards_per_host=2, seed=4)), 3)
  per = [take(grain_pipeline.GrainBatchIterator(spec(shard_id=s, num_shards=2, seed=4)), 3)
         for s in range(2)]
  glob = [{k: np.concatenate([per[0][b][k], per[1][b][k]]) for k in one[b]} for b in range(3)]
  assert_batches_equal(one, glob)


@pytest.mark.parametrize("pack", [False, True])
def test_exact_resume_from_checkpoint(reg, tmp_path, pack):
  lengths = {"inputs": 400, "targets": 32} if pack else LENGTHS
  s = spec(batch_size=4, seed=5, pack=pack, lengths=lengths)
  it = grain_pipeline.GrainBatchIterator(s)
  take(it, 3)
  it.save_checkpoint(str(tmp_path), 1)
  after = take(it, 4)
  state = json.loads((tmp_path / "process_1.json").read_text())
  assert state["batches"] == 3 and state["loader"] == "grain"
  fresh = grain_pipeline.GrainBatchIterator(s)
  fresh.restore_checkpoint(str(tmp_path), 1)
  assert_batches_equal(take(fresh, 4), after)
  if pack:  # several examples share a row, each segment as the example alone
    b = after[0]
    assert b["decoder_segment_ids"].max() > 1
    for row in range(4):
      seg, pos = b["decoder_segment_ids"][row], b["decoder_positions"][row]
      for sid in range(1, seg.max() + 1):
        at = np.nonzero(seg == sid)[0]
        np.testing.assert_array_equal(pos[at], np.arange(len(at)))
        assert b["decoder_input_tokens"][row, at[0]] == 0
        np.testing.assert_array_equal(b["decoder_input_tokens"][row, at[1:]],
                                      b["decoder_target_tokens"][row, at[:-1]])


def test_restore_is_constant_time_at_any_step(reg):
  """A position a million batches on: computed from the counter, nothing re-read."""
  it = grain_pipeline.GrainBatchIterator(spec())
  it.restore({**it.state(), "batches": 10**6})
  batch = next(it)
  ref = grain_pipeline.GrainBatchIterator(spec())
  assert ref.example_ids(10**6) == it.example_ids(10**6)
  assert it.state()["batches"] == 10**6 + 1 and batch["decoder_target_tokens"].shape == (4, 224)


def test_deterministic_given_the_seed(reg):
  a = take(grain_pipeline.GrainBatchIterator(spec(seed=11)), 3)
  assert_batches_equal(a, take(grain_pipeline.GrainBatchIterator(spec(seed=11)), 3))
  b = take(grain_pipeline.GrainBatchIterator(spec(seed=12)), 3)
  assert any((x["decoder_target_tokens"] != y["decoder_target_tokens"]).any()
             for x, y in zip(a, b))


@pytest.mark.parametrize("pack", [False, True])
def test_threads_and_workers_give_the_same_batches(reg, pack):
  s = spec(seed=2, pack=pack)
  ref = take(grain_pipeline.GrainBatchIterator(s, read_threads=0), 6)
  assert_batches_equal(take(grain_pipeline.GrainBatchIterator(s, read_threads=4), 6), ref)
  assert_batches_equal(take(grain_pipeline.GrainBatchIterator(s, workers=2), 6), ref)


def test_dataset_hook_selects_the_loader(reg):
  assert isinstance(datasets.SniDataset(loader="grain").batches(spec()),
                    grain_pipeline.GrainBatchIterator)
  assert isinstance(datasets.SniDataset().batches(spec()), pipeline.BatchIterator)
  assert isinstance(datasets.SniDataset(loader="grain").batches(spec()), datasets.BatchStream)
  with pytest.raises(ValueError, match="SniDataset.loader.*'tf.data'"):
    datasets.SniDataset(loader="tf.data")


def test_arrayrecord_files_hold_the_prepared_examples(reg):
  task = seqio.get_mixture_or_task(reg.tasks[0])
  store = arrayrecord.ArrayRecordStore(task.source._store)  # pylint: disable=protected-access
  meta = store.ensure(task.source._vocabulary)  # pylint: disable=protected-access
  recs = arrayrecord.read(meta["paths"]["train"])
  assert [r.id for r in recs] == source_ids(reg.tasks[0])
  raw = list(task.source.get_dataset("train", shuffle=False).as_numpy_iterator())
  for r, ex in zip(recs, raw):
    np.testing.assert_array_equal(r.inputs, ex["inputs"])
    np.testing.assert_array_equal(r.targets, ex["targets"])


def test_bad_input_errors_name_the_problem(reg, tmp_path):
  with pytest.raises(ValueError, match="'grsni_trian' is not a registered.*grsni_train"):
    next(grain_pipeline.GrainBatchIterator(spec("grsni_trian")))
  with pytest.raises(ValueError, match="read_threads"):
    grain_pipeline.GrainBatchIterator(spec(), read_threads=-1)
  packed = grain_pipeline.GrainBatchIterator(spec(pack=True))
  next(packed)
  with pytest.raises(ValueError, match=r"\['packer'\]=None"):
    grain_pipeline.GrainBatchIterator(spec(pack=True)).restore(
        {**packed.state(), "packer": None})
  old = pipeline.BatchIterator.from_spec(spec(reg.tasks[0]))  # a real tf.data state
  next(old)
  old.save_checkpoint(str(tmp_path / "tf"), 0)
  with pytest.raises(ValueError, match="process_0.json.*tf.data loader.*loader='tfdata'"):
    grain_pipeline.GrainBatchIterator(spec(reg.tasks[0])).restore_checkpoint(
        str(tmp_path / "tf"), 0)
  it = grain_pipeline.GrainBatchIterator(spec(seed=1))
  it.save_checkpoint(str(tmp_path / "g"), 0)
  with pytest.raises(ValueError, match=r"\['seed'\]=1 but this iterator has 2"):
    grain_pipeline.GrainBatchIterator(spec(seed=2)).restore_checkpoint(str(tmp_path / "g"), 0)
  with pytest.raises(FileNotFoundError, match="process_3.json"):
    it.restore_checkpoint(str(tmp_path / "g"), 3)
  with pytest.raises(ValueError, match="rates must be finite"):
    index_mixture.IndexMixture([1], [-1.0], seed=0)
  other = dataclasses.replace(spec(), mixture_or_task_name="grcap_train")
  it.save_checkpoint(str(tmp_path / "m"), 0)
  with pytest.raises(ValueError, match="'name'"):
    grain_pipeline.GrainBatchIterator(other).restore_checkpoint(str(tmp_path / "m"), 0)


def test_a_finite_pass_over_an_empty_shard_is_empty():
  mix = index_mixture.IndexMixture([0, 0], [3, 4], seed=0, num_epochs=1)
  assert len(mix) == 0
  with pytest.raises(ValueError, match="no task has both an example"):
    index_mixture.IndexMixture([0, 0], [3, 4], seed=0)
