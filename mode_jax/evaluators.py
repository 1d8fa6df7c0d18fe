"""Evaluators that `train` and `eval` run: small gin-bound configs, built on demand.

An evaluator config (gin: `train.evaluators = [@evaluators.DecodeEvaluation(),
@evaluators.ValidationLoss()]`) has `build(context) -> evaluator`; the
evaluator has a `name`, `evaluate(states) -> (metrics, records)` and
`scalars(metrics) -> (values, console keys)` for the metrics log and
TensorBoard. Two kinds:

  DecodeEvaluation  greedy decoding scored with ROUGE-L and exact match,
                    overall, per task and per category (`evaluation.Evaluator`);
  ValidationLoss    teacher-forced mean token cross-entropy and perplexity of
                    the held-out split, overall and per task: the training
                    loss (same forward pass, loss weights and `loss_chunk`)
                    on data the run never trains on; jitted once and sharded
                    like the train step.

`states` is the model's (params, adapter state, frozen) tuple of
`trainer.split_model`. Several processes: both split each global batch by
rows as training does (`trainer.data_shard`); the validation loss sums
inside the sharded computation, so no row is counted twice.

Legend: B batch, L length.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from mode_jax import datasets
from mode_jax import evaluation
from mode_jax import losses
from mode_jax import sharding
from mode_jax import trainer


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What an evaluator config builds from (given by `train` or `evaluate`)."""
  dataset: Any  # a datasets.Dataset
  graphdef: Any
  mesh: Any
  task_feature_lengths: Mapping[str, int]
  mixture_or_task_name: str | None = None  # the training mixture
  prefix_lm: bool = False
  loss_chunk: int = 0


def _check_batch(what: str, batch_size: int, mesh) -> None:
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"{what}.batch_size must be a positive int, got {batch_size!r}")
  if mesh is not None and batch_size % sharding.batch_shards(mesh):
    raise ValueError(f"{what}.batch_size={batch_size} does not split over the "
                     f"{sharding.batch_shards(mesh)} data-parallel devices")


@dataclasses.dataclass(frozen=True)
class DecodeEvaluation:
  """Greedy decoding, ROUGE-L and exact match (the paper's metric).

  Attributes:
    tasks: task names for `Dataset.eval_examples` (None: the dataset's default).
    split: "validation" (held-out instances of the training tasks) or "test".
    max_decode_len: generated tokens at most.
    batch_size: prompts per decoding call (global).
    max_examples_per_task: decode at most this many instances of each task
      (the official SNI evaluation: 100), the same ones on every process and
      in every run (`data.splits.cap_instances`: the smallest seeded hashes
      of the instance ids); None (default): all, as the full evaluation.
  """
  tasks: Sequence[str] | None = None
  split: str = "validation"
  max_decode_len: int = 64
  batch_size: int = 16
  max_examples_per_task: int | None = None

  def __post_init__(self):
    if self.split not in ("validation", "test"):
      raise ValueError(f"DecodeEvaluation.split must be 'validation' or 'test', got "
                       f"{self.split!r}")
    if not isinstance(self.max_decode_len, int) or self.max_decode_len < 1:
      raise ValueError(f"DecodeEvaluation.max_decode_len must be a positive int, got "
                       f"{self.max_decode_len!r}")
    cap = self.max_examples_per_task
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
      raise ValueError("DecodeEvaluation.max_examples_per_task must be None or a positive "
                       f"int, got {cap!r}")

  def build(self, ctx: EvalContext) -> "Decode":
    _check_batch("DecodeEvaluation", self.batch_size, ctx.mesh)
    # Only a capped evaluation passes the keyword: a Dataset written before
    # the cap still serves the full one.
    cap = ({} if self.max_examples_per_task is None
           else {"max_examples_per_task": self.max_examples_per_task})
    examples = ctx.dataset.eval_examples(None if self.tasks is None else list(self.tasks),
                                         self.split, **cap)
    return Decode(evaluation.Evaluator(
        examples, ctx.dataset.vocabulary(), ctx.graphdef,
        input_length=ctx.task_feature_lengths["inputs"], max_decode_len=self.max_decode_len,
        batch_size=self.batch_size, mesh=ctx.mesh))


class Decode:
  """A built `DecodeEvaluation` (`evaluation.Evaluator` with a name and scalars)."""
  name = "decode"

  def __init__(self, evaluator: evaluation.Evaluator):
    self.evaluator = evaluator

  def evaluate(self, states) -> tuple[dict, list[dict]]:
    return self.evaluator.evaluate(states)

  @staticmethod
  def scalars(metrics: dict) -> tuple[dict, list[str]]:
    values = {"rougeL": metrics["overall"]["rougeL"],
              "exact_match": metrics["overall"]["exact_match"],
              **{f"task/{t}/rougeL": m["rougeL"] for t, m in metrics["per_task"].items()},
              **{f"category/{c}/rougeL": m["rougeL"]
                 for c, m in metrics["per_category"].items()}}
    return values, ["rougeL", "exact_match"]


@dataclasses.dataclass(frozen=True)
class ValidationLoss:
  """Teacher-forced cross-entropy and perplexity on a held-out split.

  Attributes:
    batch_size: rows per call (global).
    split: the dataset split read once ("validation": the seeded held-out
      instances of the training tasks).
    mixture_or_task_name: what to read (None: the training mixture); a
      mixture is read task by task, so every example counts once and the
      losses are also reported per task.
    loss_chunk: as `train.loss_chunk` (None: the training run's).
  """
  batch_size: int = 16
  split: str = "validation"
  mixture_or_task_name: str | None = None
  loss_chunk: int | None = None

  def build(self, ctx: EvalContext) -> "ValidationLossEvaluator":
    _check_batch("ValidationLoss", self.batch_size, ctx.mesh)
    name = self.mixture_or_task_name or ctx.mixture_or_task_name
    if not name:
      raise ValueError("ValidationLoss needs a mixture: set ValidationLoss."
                       "mixture_or_task_name (or train.mixture_or_task_name)")
    chunk = ctx.loss_chunk if self.loss_chunk is None else self.loss_chunk
    return ValidationLossEvaluator(ctx.dataset, ctx.graphdef, name, ctx.task_feature_lengths,
                                   batch_size=self.batch_size, split=self.split,
                                   mesh=ctx.mesh, prefix_lm=ctx.prefix_lm, loss_chunk=chunk)


def make_loss_sums_fn(graphdef, *, prefix_lm: bool = False, loss_chunk: int = 0):
  """(states, batch) -> (summed weighted token cross-entropy, summed weights); not jitted."""

  def loss_sums(states, batch):
    model = nnx.merge(graphdef, *states)
    hidden_bld = model(batch["decoder_input_tokens"], **trainer.model_inputs(batch, prefix_lm),
                       return_hidden=True)
    mean, total = losses.chunked_cross_entropy(
        hidden_bld, model.project, batch["decoder_target_tokens"],
        batch["decoder_loss_weights"], loss_chunk)
    return mean * jnp.maximum(total, 1.0), total

  return loss_sums


class ValidationLossEvaluator:
  """Reads the held-out split once, then scores any model state on it.

  Args:
    dataset: a `datasets.Dataset`.
    graphdef: the model's graphdef (`trainer.split_model`).
    mixture_or_task_name: read task by task (`Dataset.task_names`).
    task_feature_lengths: {"inputs": N, "targets": M}.
    batch_size: global rows per call; each process reads its rows.
    mesh: None (one device) or the training mesh.
  """
  name = "loss"

  def __init__(self, dataset, graphdef, mixture_or_task_name: str,
               task_feature_lengths: Mapping[str, int], *, batch_size: int,
               split: str = "validation", mesh=None, prefix_lm: bool = False,
               loss_chunk: int = 0):
    self.mesh = mesh
    shard, num_shards = (0, 1) if mesh is None else trainer.data_shard(mesh, batch_size)
    self.num_shards = num_shards
    rows = batch_size // num_shards
    self.keys = trainer.BATCH_KEYS + (("decoder_causal_attention",) if prefix_lm else ())
    self.tasks = list(dataset.task_names(mixture_or_task_name))
    local = []
    for t in self.tasks:
      spec = datasets.BatchSpec(t, dict(task_feature_lengths), rows, split=split,
                                shuffle=False, shard_id=shard, num_shards=num_shards,
                                num_epochs=1)
      local.append([{k: b[k] for k in self.keys} for b in datasets.finite_batches(dataset, spec)])
    counts = np.array([len(b) for b in local], np.int32)
    if jax.process_count() > 1:  # every process makes the same number of calls
      counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(
          -1, len(self.tasks)).max(0)
    length = sum(task_feature_lengths.values())
    template = next((b[0] for b in local if b), None)
    if template is not None:
      length = template["decoder_input_tokens"].shape[1]
    empty = {k: np.zeros((rows, length), np.float32 if k == "decoder_loss_weights" else np.int32)
             for k in self.keys}
    # (task index, this process's rows); a process with fewer batches of a
    # task than another feeds zero-weight rows.
    self.batches = [(i, local[i][j] if j < len(local[i]) else empty)
                    for i in range(len(self.tasks)) for j in range(int(counts[i]))]
    if not self.batches:
      raise ValueError(f"ValidationLoss: {mixture_or_task_name!r} has no {split!r} examples")
    self.loss_sums = make_loss_sums_fn(graphdef, prefix_lm=prefix_lm, loss_chunk=loss_chunk)
    self._fn = None

  def _place(self, batch):
    if self.mesh is None:
      return {k: jnp.asarray(v) for k, v in batch.items()}
    return trainer.place_batch(batch, self.mesh, num_shards=self.num_shards)

  def evaluate(self, states) -> tuple[dict, list[dict]]:
    """({"loss", "perplexity", "tokens", "per_task": {task: {...}}}, no records)."""
    t0 = time.time()
    states = tuple(states)
    sums = []
    for _, batch in self.batches:
      batch = self._place(batch)
      if self._fn is None:
        if self.mesh is None:
          self._fn = jax.jit(self.loss_sums)
        else:
          self._fn = jax.jit(self.loss_sums, in_shardings=(
              sharding.state_shardings(states, self.mesh),
              trainer.batch_shardings(batch, self.mesh)))
      sums.append(self._fn(states, batch))
    nll = np.asarray(jnp.stack([s[0] for s in sums]), np.float64)
    tokens = np.asarray(jnp.stack([s[1] for s in sums]), np.float64)
    task_of = np.array([i for i, _ in self.batches])
    per_task = {}
    for i, t in enumerate(self.tasks):
      n, w = nll[task_of == i].sum(), tokens[task_of == i].sum()
      if w > 0:
        per_task[t] = _loss_metrics(n, w)
    out = _loss_metrics(nll.sum(), tokens.sum())
    out.update(per_task=per_task, seconds=time.time() - t0)
    return out, []

  @staticmethod
  def scalars(metrics: dict) -> tuple[dict, list[str]]:
    values = {"loss": metrics["loss"], "perplexity": metrics["perplexity"],
              **{f"task/{t}/loss": m["loss"] for t, m in metrics["per_task"].items()}}
    return values, ["loss", "perplexity"]


def _loss_metrics(nll: float, tokens: float) -> dict:
  loss = float(nll / max(tokens, 1.0))
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": float(tokens)}


def build_all(configs: Sequence[Any], ctx: EvalContext) -> list:
  """The evaluators of `configs` (each with `build(ctx)`), names checked unique."""
  out = []
  for c in configs:
    if not callable(getattr(c, "build", None)):
      raise ValueError(f"evaluator {c!r} has no build(context) (expected e.g. "
                       "@evaluators.DecodeEvaluation() or @evaluators.ValidationLoss())")
    out.append(c.build(ctx))
  names = [e.name for e in out]
  if len(set(names)) != len(names):
    raise ValueError(f"evaluators with the same name: {names}")
  return out
