"""SeqIO tasks, mixtures, feature conversion, host sharding and resuming."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio

from mode_jax.data import config
from mode_jax.data import pipeline
from mode_jax.data import tasks

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")
TASKS = ["task1146_country_capital", "task1498_24hour_to_12hour_clock", "task111",
         "task141_odd-man-out_classification_category"]
LENGTHS = {"inputs": 192, "targets": 32}
CFG = config.SniConfig(max_input_tokens=192)


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("cache"))
  kw = dict(cfg=CFG, cache_dir=cache, tasks=TASKS, prefix="tsni", allow_missing=True,
            case_study=False, test=False)
  tasks.register_sni(SAMPLE, **kw)
  return tasks.register_sni(SAMPLE, **kw)  # Idempotent: the second call must not fail.


def test_registration_names(reg):
  assert reg.tasks == ("tsni_task1146_country_capital", "tsni_task1498_24hour_to_12hour_clock",
                       "tsni_task111_asset_sentence_simplification",
                       "tsni_task141_odd_man_out_classification_category")
  assert reg.mixtures == {"train": "tsni_train"}
  mix = seqio.get_mixture_or_task("tsni_train")
  assert {t.name for t in mix.tasks} == set(reg.tasks)
  task = seqio.get_mixture_or_task(reg.tasks[0])
  assert task.num_input_examples("train") + task.num_input_examples("validation") == 79
  assert mix.get_rate(task) == task.num_input_examples("train")


def test_full_sample_registration_with_mixtures(tmp_path):
  reg = tasks.register_sni(SAMPLE, cache_dir=str(tmp_path), allow_missing=True, prefix="fsni")
  assert set(reg.mixtures) == {"train", "case_study", "test"}
  assert len(seqio.get_mixture_or_task("fsni_case_study").tasks) == 10
  assert len(seqio.get_mixture_or_task("fsni_test").tasks) == 4
  assert "task269_csrg_counterfactual_story_generation" in reg.missing
  # The main selection (what evaluation scores by default) is the train
  # split only: no test-split tasks ride along with the extra mixtures.
  assert len(reg.selected) == 20 and "task036_qasc_topic_word_to_generate_related_fact" \
      not in reg.selected and "task036_qasc_topic_word_to_generate_related_fact" in reg.sni_tasks
  assert sorted(m.name for m in seqio.get_mixture_or_task("fsni_train").tasks) == sorted(
      tasks.task_registry_name(t, "fsni") for t in reg.selected)
  with pytest.raises(FileNotFoundError, match="allow_missing"):
    tasks.register_sni(SAMPLE, cache_dir=str(tmp_path), prefix="fsni")
  assert not os.listdir(tmp_path)  # Registration is lazy: nothing prepared yet.


def test_batches_shapes_and_loss_only_on_targets(reg):
  it = pipeline.BatchIterator("tsni_train", LENGTHS, 4, seed=1)
  for _ in range(3):
    b = next(it)
  assert set(b) == {"decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                    "decoder_causal_attention"}
  for v in b.values():
    assert v.shape == (4, 224) and v.dtype == np.int32
  w, causal = b["decoder_loss_weights"], b["decoder_causal_attention"]
  assert w.sum() > 0
  for row in range(4):
    n_in = causal[row].sum() - 1  # PrefixLM marks the inputs and the first target position.
    assert not w[row, :n_in].any()
    last = np.nonzero(w[row])[0][-1]
    assert b["decoder_target_tokens"][row, last] == 1  # EOS ends the target.


def test_features_match_source_examples(reg):
  name = reg.tasks[0]
  raw = list(seqio.get_mixture_or_task(name).get_dataset(
      LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
  it = pipeline.BatchIterator(name, LENGTHS, 1, split="validation", shuffle=False,
                              num_epochs=1)
  batches = list(it)
  assert len(batches) == len(raw) > 0
  for ex, b in zip(raw, batches):
    tgt, w = b["decoder_target_tokens"][0], b["decoder_loss_weights"][0]
    n_in = len(ex["inputs"])
    assert list(tgt[:n_in]) == list(ex["inputs"])
    assert list(tgt[w == 1]) == list(ex["targets"])
    assert ex["targets"][-1] == 1
    assert ex["references"].tolist()
  exs = tasks.eval_examples(SAMPLE, [TASKS[0]], cfg=CFG)
  assert [e.prompt.encode() for e in exs] == [r["inputs_pretokenized"] for r in raw]
  assert [list(e.input_ids) for e in exs] == [list(r["inputs"]) for r in raw]
  assert exs[0].category == "misc." and exs[0].references


def test_packing(reg):
  lengths = {"inputs": 512, "targets": 64}  # Rows of 576 hold several ~150-token examples.
  b = next(pipeline.BatchIterator("tsni_train", lengths, 2, seed=0, pack=True))
  assert {"decoder_segment_ids", "decoder_positions"} <= set(b)
  assert b["decoder_segment_ids"].max() >= 2 and b["decoder_target_tokens"].shape == (2, 576)
  seg, w = b["decoder_segment_ids"], b["decoder_loss_weights"]
  assert not w[seg == 0].any()  # No loss on padding.


def test_host_shards_are_disjoint(reg):
  task = seqio.get_mixture_or_task(reg.tasks[0])
  parts = [[ex["id"] for ex in task.get_dataset(
      LENGTHS, split="train", shuffle=False, shard_info=seqio.ShardInfo(i, 3))
            .as_numpy_iterator()] for i in range(3)]
  flat = [x for p in parts for x in p]
  assert len(flat) == len(set(flat)) == task.num_input_examples("train")
  assert all(parts)


def test_restore_continues_the_stream(reg):
  kw = dict(mixture_or_task_name="tsni_train", task_feature_lengths=LENGTHS, batch_size=3,
            seed=7, shard_id=1, num_shards=2)
  ref = [next(it) for it in [pipeline.BatchIterator(**kw)] for _ in range(5)]
  it = pipeline.BatchIterator(**kw)
  next(it), next(it)
  state = json.loads(json.dumps(it.state()))
  assert state["batches"] == 2
  resumed = pipeline.BatchIterator(**kw)
  resumed.restore(state)
  for want in ref[2:]:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  other = pipeline.BatchIterator(**{**kw, "seed": 8})
  with pytest.raises(ValueError, match="seed"):
    other.restore(state)


def test_postprocess_and_metric_fns(reg):
  task = seqio.get_mixture_or_task(reg.tasks[2])  # task111: several references.
  ex = next(task.get_dataset(LENGTHS, split="test", shuffle=False).as_numpy_iterator())
  refs = task.postprocess_fn("ignored", example=ex, is_target=True)
  assert isinstance(refs, list) and len(refs) >= 7
  assert task.postprocess_fn("pred", example=ex, is_target=False) == "pred"
  scores = task.metric_fns[0]([refs], [refs[1]])
  assert scores == {"rougeL": 100.0, "exact_match": 100.0}


def test_bad_pipeline_config():
  with pytest.raises(ValueError, match="task_feature_lengths"):
    pipeline.PipelineConfig("x", {"inputs": 8}, 2)
  with pytest.raises(ValueError, match="shard_id"):
    pipeline.PipelineConfig("x", LENGTHS, 2, shard_id=2, num_shards=2)
  with pytest.raises(ValueError, match="eval_fraction"):
    config.SniConfig(eval_fraction=1.5)


@pytest.mark.slow  # a subprocess
def test_models_and_adapters_do_not_import_tensorflow():
  code = ("import sys, mode_jax.adapters, mode_jax.models.config, mode_jax.data.sni, "
          "mode_jax.data.metrics; assert 'tensorflow' not in sys.modules, 'tf imported'")
  root = os.path.join(os.path.dirname(__file__), "..", "..")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
