"""The seams of train / evaluate: a dataset and evaluators injected through gin.

`MemoryDataset` is a tiny in-memory `datasets.Dataset` (no SeqIO, no SNI)
registered with gin here; training, checkpointing, resuming and the
teacher-forced validation loss reach it only through the seams.
"""

import dataclasses
import json
import os

import gin
import jax
import numpy as np
import pytest

from mode_jax import adapters
from mode_jax import datasets
from mode_jax import evaluators
from mode_jax import files
from mode_jax import launch
from mode_jax import models
from mode_jax import sharding
from mode_jax import train as train_lib
from mode_jax import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNI = os.path.join(REPO, "data", "sni_sample")
VOCAB = os.path.join(REPO, "data", "vocab", "sni_sample_512.model")
INPUTS, TARGETS = 12, 4
LENGTH = INPUTS + TARGETS
# Examples per task and split: 11 and 5 validation rows leave partial batches.
SIZES = {"mem_a": {"train": 24, "validation": 11}, "mem_b": {"train": 24, "validation": 5}}


def _examples(task: str, split: str) -> dict:
  """Deterministic token rows of one task and split, as the feature converter gives them."""
  n = SIZES[task][split]
  rng = np.random.default_rng([ord(c) for c in task + split])
  seq = rng.integers(3, 500, (n, LENGTH + 1)).astype(np.int32)
  ends = rng.integers(INPUTS + 1, LENGTH + 1, n)  # rows end before LENGTH: padding
  weights = np.zeros((n, LENGTH), np.float32)
  for i, e in enumerate(ends):
    weights[i, INPUTS:e] = 1.0
    seq[i, e + 1:] = 0
  return {"decoder_input_tokens": seq[:, :-1], "decoder_target_tokens": seq[:, 1:],
          "decoder_loss_weights": weights}


class MemoryStream:
  """Rows `shard_id::num_shards` of the examples, in batches; position in JSON."""

  def __init__(self, spec: datasets.BatchSpec):
    tasks = MemoryDataset().task_names(spec.mixture_or_task_name)
    parts = [_examples(t, spec.split) for t in tasks]
    self.rows = {k: np.concatenate([p[k] for p in parts])[spec.shard_id::spec.num_shards]
                 for k in parts[0]}
    self.spec, self.position = spec, 0

  def __next__(self):
    n, b = len(self.rows["decoder_input_tokens"]), self.spec.batch_size
    if self.spec.num_epochs == 1:
      if self.position * b >= n:
        raise StopIteration
      idx = np.arange(self.position * b, min(n, self.position * b + b))
    else:
      idx = np.arange(self.position * b, self.position * b + b) % n
    self.position += 1
    return {k: v[idx] for k, v in self.rows.items()}

  def state(self):
    return {"batches": self.position}

  def save_checkpoint(self, directory, process_index=0):
    files.makedirs(directory)
    files.write_text(files.join(directory, f"process_{process_index}.json"),
                     json.dumps(self.state()))

  def restore_checkpoint(self, directory, process_index=0):
    path = files.join(directory, f"process_{process_index}.json")
    self.position = json.loads(files.read_text(path))["batches"]
    MemoryDataset.restored.append(self.position)


@dataclasses.dataclass
class MemoryDataset:
  """A `datasets.Dataset` of two token-level tasks held in memory."""
  requests = []  # every BatchSpec asked for (class-wide: gin builds the instance)
  restored = []  # positions restored from run checkpoints

  def prepare(self, mixture_or_task_name, task_feature_lengths):
    self.task_names(mixture_or_task_name)
    if dict(task_feature_lengths) != {"inputs": INPUTS, "targets": TARGETS}:
      raise ValueError(f"MemoryDataset has lengths {INPUTS}+{TARGETS}")

  def vocabulary(self):
    from mode_jax.data import vocab  # pylint: disable=g-import-not-at-top
    return vocab.get_vocabulary(VOCAB)

  def batches(self, spec):
    MemoryDataset.requests.append(spec)
    return MemoryStream(spec)

  def task_names(self, mixture_or_task_name):
    if mixture_or_task_name == "mem":
      return list(SIZES)
    if mixture_or_task_name in SIZES:
      return [mixture_or_task_name]
    raise ValueError(f"MemoryDataset has no mixture {mixture_or_task_name!r}")

  def eval_examples(self, tasks, split):
    raise ValueError("MemoryDataset holds tokens only: no decode-and-score examples")


gin.external_configurable(MemoryDataset, module="test_seams")


def _reference_loss(model, rows: dict) -> tuple[float, float]:
  """(sum of weighted token NLL, sum of weights): the model's logits, NumPy log-softmax."""
  logits = np.asarray(model(jax.numpy.asarray(rows["decoder_input_tokens"])), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, rows["decoder_target_tokens"][..., None], -1)[..., 0]
  w = rows["decoder_loss_weights"].astype(np.float64)
  return float((nll * w).sum()), float(w.sum())


@pytest.mark.parametrize("loss_chunk", [0, 5])
def test_validation_loss_equals_a_direct_computation(loss_chunk):
  cfg = models.get_config("tiny")
  acfg = adapters.AdapterConfig(kind="mode", rank=4, num_experts=4, b_init_scale=0.1)
  mesh = sharding.make_mesh()
  model = models.build_sharded(cfg, acfg, mesh, seed=3)
  graphdef, params, astate, frozen = trainer.split_model(model)
  ctx = evaluators.EvalContext(MemoryDataset(), graphdef, mesh,
                               {"inputs": INPUTS, "targets": TARGETS}, "mem")
  ev = evaluators.ValidationLoss(batch_size=8, loss_chunk=loss_chunk).build(ctx)
  with sharding.use_mesh(mesh):
    metrics, records = ev.evaluate((params, astate, frozen))
  assert records == [] and set(metrics["per_task"]) == set(SIZES)
  total_nll = total_w = 0.0
  for task in SIZES:
    nll, w = _reference_loss(model, _examples(task, "validation"))
    got = metrics["per_task"][task]
    assert got["tokens"] == w
    np.testing.assert_allclose(got["loss"], nll / w, rtol=2e-5)
    total_nll, total_w = total_nll + nll, total_w + w
  assert metrics["tokens"] == total_w
  np.testing.assert_allclose(metrics["loss"], total_nll / total_w, rtol=2e-5)
  np.testing.assert_allclose(metrics["perplexity"], np.exp(total_nll / total_w), rtol=2e-5)


def _bindings(model_dir, steps):
  return [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8",
          f"SNI_DIR = '{SNI}'", f"VOCAB_PATH = '{VOCAB}'", f"INPUT_LENGTH = {INPUTS}",
          f"TASK_FEATURE_LENGTHS = {{'inputs': {INPUTS}, 'targets': {TARGETS}}}",
          "RANK = 4", "EXPERTS = 4", "MIXTURE_OR_TASK_NAME = 'mem'",
          "train.dataset = @test_seams.MemoryDataset()",
          "train.evaluators = [@evaluators.ValidationLoss()]",
          "evaluators.ValidationLoss.batch_size = 8", "train.eval_every = 2",
          "train.checkpoint_every = 2", "train.log_every = 1", "train.async_checkpoint = False"]


def _train(model_dir, steps):
  launch.parse_gin(["models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin"],
                   _bindings(model_dir, steps))
  return launch.call_configured(train_lib.train)


@pytest.mark.slow
def test_a_dataset_and_an_evaluator_bound_in_gin_reach_train(tmp_path):
  d = str(tmp_path / "run")
  MemoryDataset.requests.clear()
  MemoryDataset.restored.clear()
  summary = _train(d, 2)
  assert summary["step"] == 2 and np.isfinite(summary["final"]["loss"])
  train_specs = [s for s in MemoryDataset.requests if s.split == "train"]
  assert [(s.mixture_or_task_name, s.batch_size, s.shuffle) for s in train_specs] == [
      ("mem", 8, True)]
  assert {s.mixture_or_task_name for s in MemoryDataset.requests
          if s.split == "validation"} == set(SIZES)
  val = json.load(open(os.path.join(d, "eval", "validation_loss_2.json")))
  assert set(val["per_task"]) == set(SIZES) and np.isfinite(val["loss"])
  np.testing.assert_allclose(val["perplexity"], np.exp(val["loss"]), rtol=1e-6)
  logged = [json.loads(l) for l in open(os.path.join(d, "eval_metrics.jsonl"))]
  assert [e["step"] for e in logged] == [2] and "validation/perplexity" in logged[0]
  assert not os.path.exists(os.path.join(d, "eval", "metrics_2.json"))  # no decoding
  data = os.path.join(d, "checkpoints", "2", "data", "process_0.json")
  assert json.load(open(data)) == {"batches": 2}
  # Resuming continues the injected stream from its checkpointed position.
  assert _train(d, 3)["step"] == 3
  assert MemoryDataset.restored == [2]


def test_a_dataset_without_the_methods_fails_naming_them():
  with pytest.raises(ValueError, match="lacks task_names, eval_examples"):
    datasets.check_dataset(type("Half", (), {"prepare": lambda s: 0, "vocabulary": lambda s: 0,
                                             "batches": lambda s: 0})())


def test_an_evaluator_without_build_fails_naming_it():
  ctx = evaluators.EvalContext(MemoryDataset(), None, None, {"inputs": INPUTS,
                                                            "targets": TARGETS}, "mem")
  with pytest.raises(ValueError, match="has no build"):
    evaluators.build_all(["rouge"], ctx)


def test_aot_compiles_the_decoding_evaluators_bound_in_gin():
  from mode_jax import aot  # pylint: disable=g-import-not-at-top
  bindings = [b for b in _bindings("unused", 1) if not b.startswith("train.evaluators")]
  launch.parse_gin(["models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin"], bindings + [
      "train.evaluators = [@evaluators.DecodeEvaluation(), @evaluators.ValidationLoss()]",
      "evaluators.DecodeEvaluation.batch_size = 24",
      "evaluators.DecodeEvaluation.max_decode_len = 5"])
  assert aot.eval_settings(aot.train_arguments()) == [("train eval", 24, 5)]
  launch.parse_gin(["models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin"],
                   bindings + ["train.max_decode_len = 7"])  # the default evaluator
  assert aot.eval_settings(aot.train_arguments()) == [("train eval", 16, 7)]
