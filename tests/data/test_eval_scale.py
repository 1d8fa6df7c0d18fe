"""Evaluation that scales: a deterministic per-task cap, examples streamed in batches.

A random-adapter tiny model decodes a few bundled tasks; no training.
"""

import json
import os
import shutil

import numpy as np
import pytest

from mode_jax import adapters
from mode_jax import datasets
from mode_jax import evaluation
from mode_jax import evaluators
from mode_jax import models
from mode_jax import sharding
from mode_jax import trainer
from mode_jax.data import config
from mode_jax.data import tasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNI = os.path.join(REPO, "data", "sni_sample")
VOCAB = os.path.join(REPO, "data", "vocab", "sni_sample_512.model")
TASKS = ["task1146_country_capital", "task1321_country_continent"]
LENGTHS = {"inputs": 48, "targets": 4}
CFG = config.SniConfig(max_input_tokens=48)
BATCH, DECODE = 8, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  mesh = sharding.make_mesh()
  model = models.build_sharded(
      models.get_config("tiny"),
      adapters.AdapterConfig(kind="mode", rank=4, num_experts=4, b_init_scale=0.1), mesh, seed=3)
  graphdef, params, astate, frozen = trainer.split_model(model)
  dataset = datasets.SniDataset(sni_dir=SNI, sni=CFG, vocab_path=VOCAB,
                                cache_dir=str(tmp_path_factory.mktemp("cache")))
  ctx = evaluators.EvalContext(dataset, graphdef, mesh, LENGTHS)
  return {"ctx": ctx, "states": (params, astate, frozen), "mesh": mesh}


def _ids(stream):
  return [(ex.task, ex.id) for ex in stream]


def test_cap_is_seeded_stable_and_independent_of_the_file_order(tmp_path):
  full = _ids(tasks.eval_stream(SNI, TASKS, CFG, fit=False))
  stream = tasks.eval_stream(SNI, TASKS, CFG, fit=False, max_examples_per_task=3)
  capped = _ids(stream)
  assert capped == _ids(stream)  # every pass reads the same examples
  for t in TASKS:
    mine = [x for x in capped if x[0] == t]
    assert len(mine) == min(3, sum(x[0] == t for x in full))
    assert mine == [x for x in full if x in set(mine)]  # a subset, in file order
  # Another file order (instances reversed) keeps the same instances.
  shutil.copytree(os.path.join(SNI, "splits"), tmp_path / "splits")
  os.makedirs(tmp_path / "tasks")
  for t in TASKS:
    task = json.load(open(os.path.join(SNI, "tasks", t + ".json")))
    task["Instances"] = task["Instances"][::-1]
    json.dump(task, open(tmp_path / "tasks" / f"{t}.json", "w"))
  reversed_ = _ids(tasks.eval_stream(str(tmp_path), TASKS, CFG, fit=False,
                                     max_examples_per_task=3))
  assert sorted(reversed_) == sorted(capped)
  # Another split seed, another choice; a cap above the counts keeps everything.
  other = _ids(tasks.eval_stream(SNI, TASKS, config.SniConfig(seed=1), fit=False,
                                 max_examples_per_task=3))
  assert other != capped
  assert _ids(tasks.eval_stream(SNI, TASKS, CFG, fit=False,
                                max_examples_per_task=10**6)) == full


class _Counting:
  """A re-iterable over `stream` that counts the examples handed out."""

  def __init__(self, stream):
    self.stream, self.taken = stream, 0

  def __iter__(self):
    self.taken = 0
    for ex in self.stream:
      self.taken += 1
      yield ex


def test_streamed_evaluation_holds_one_batch_and_equals_the_list(setup):
  ctx = setup["ctx"]
  stream = ctx.dataset.eval_examples(TASKS, "validation")
  counting = _Counting(stream)
  ev = evaluation.Evaluator(counting, ctx.dataset.vocabulary(), ctx.graphdef,
                            input_length=LENGTHS["inputs"], max_decode_len=DECODE,
                            batch_size=BATCH, mesh=setup["mesh"])
  taken_at_call = []
  decode = ev._decode_batch  # pylint: disable=protected-access

  def spy(states, chunk):
    taken_at_call.append(counting.taken)
    return decode(states, chunk)

  ev._decode_batch = spy  # pylint: disable=protected-access
  with sharding.use_mesh(setup["mesh"]):
    metrics, records = ev.evaluate(setup["states"])
  n = len(records)
  assert n > BATCH and n % BATCH  # several batches, the last one short
  # The k-th decode call has seen at most k batches of examples: streamed.
  assert taken_at_call == [min(n, (k + 1) * BATCH) for k in range(-(-n // BATCH))]
  # The same evaluation over the whole list (the API before streaming).
  as_list = evaluation.Evaluator(list(stream), ctx.dataset.vocabulary(), ctx.graphdef,
                                 input_length=LENGTHS["inputs"], max_decode_len=DECODE,
                                 batch_size=BATCH, mesh=setup["mesh"])
  with sharding.use_mesh(setup["mesh"]):
    metrics2, records2 = as_list.evaluate(setup["states"])
  metrics.pop("seconds"), metrics2.pop("seconds")
  assert records == records2 and metrics == metrics2
  assert [(r["task"], r["id"]) for r in records] == _ids(stream)
  assert metrics["num_examples"] == n and set(metrics["per_task"]) == set(TASKS)
  assert {r["process"] for r in records} == {0}
  setup["uncapped"] = records


def test_decode_evaluation_cap_decodes_the_chosen_instances(setup):
  ctx = setup["ctx"]
  ev = evaluators.DecodeEvaluation(tasks=TASKS, max_decode_len=DECODE, batch_size=BATCH,
                                   max_examples_per_task=4).build(ctx)
  with sharding.use_mesh(setup["mesh"]):
    metrics, records = ev.evaluate(setup["states"])
  want = _ids(tasks.eval_stream(SNI, TASKS, CFG, fit=False, max_examples_per_task=4))
  assert [(r["task"], r["id"]) for r in records] == want
  assert metrics["num_examples"] == len(want) == 4 * len(TASKS)
  assert set(metrics["per_task"]) == set(TASKS)
  if "uncapped" in setup:  # the same instances as in the uncapped evaluation
    full = {(r["task"], r["id"]): r for r in setup["uncapped"]}
    assert all(k in full and full[k]["prompt"] == r["prompt"]
               for k, r in zip(want, records))


def test_a_dataset_without_the_cap_keyword_serves_the_full_evaluation(setup):
  ctx = setup["ctx"]
  examples = list(ctx.dataset.eval_examples(TASKS[:1], "validation"))

  class Old:  # eval_examples(tasks, split) only, returning a list
    def eval_examples(self, tasks, split):  # pylint: disable=unused-argument
      return examples

    def vocabulary(self):
      return ctx.dataset.vocabulary()

  old = evaluators.EvalContext(Old(), ctx.graphdef, setup["mesh"], LENGTHS)
  ev = evaluators.DecodeEvaluation(max_decode_len=DECODE, batch_size=BATCH).build(old)
  assert ev.evaluator.examples == examples
  with pytest.raises(TypeError):  # a cap needs the keyword: no silent full evaluation
    evaluators.DecodeEvaluation(max_examples_per_task=2, batch_size=BATCH).build(old)


@pytest.mark.parametrize("cap", [0, -1, 2.5, True])
def test_a_bad_cap_fails_naming_the_field(cap):
  with pytest.raises(ValueError, match="max_examples_per_task"):
    evaluators.DecodeEvaluation(max_examples_per_task=cap)


def test_an_empty_stream_fails_at_evaluation(setup):
  ctx = setup["ctx"]
  ev = evaluation.Evaluator(tasks.EvalExamples(SNI, (), CFG, "validation", VOCAB),
                            ctx.dataset.vocabulary(), ctx.graphdef,
                            input_length=LENGTHS["inputs"], max_decode_len=DECODE,
                            batch_size=BATCH, mesh=setup["mesh"])
  with pytest.raises(ValueError, match="at least one example"):
    ev.evaluate(setup["states"])
  np.testing.assert_equal(len(list(ev.batches())), 0)
