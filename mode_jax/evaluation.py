"""Decode-and-score evaluation on SNI instances (ROUGE-L, exact match).

The feature converters train the model on `[0] + inputs + targets + [EOS]`
(shifted right), so a prompt is decoded from `[0] + input_ids`, left-padded
to the inputs budget, and generation stops at EOS or `max_decode_len`.
Metrics are the official SNI ones, overall, per task and per category.

Several processes: each global batch of `batch_size` prompts is split by
rows as training batches are (`trainer.data_shard`); a process feeds only its
rows, fetches and detokenizes only its rows, and the predictions are then
gathered (`multihost_utils.process_allgather`) so that every process scores
the full list and reports the metrics of one process. Every example is
decoded exactly once; records carry the `process` that decoded them.

The examples are streamed: each evaluation makes one pass over a
re-iterable (`Dataset.eval_examples`), `batch_size` examples at a time, and
keeps of each example only what scoring and the records need (task, id,
prompt, references, category), never the token ids of the whole split.
Every process reads the same stream, so every process makes the same
number of decode calls without agreeing on a count first.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from mode_jax import decoding
from mode_jax import sharding
from mode_jax import trainer
from mode_jax.data import metrics as metrics_lib


class Evaluator:
  """Greedy-decodes a fixed, re-iterable set of examples and scores them.

  Args:
    examples: `mode_jax.data.prepare.PreparedExample`s with token ids: a
      list or a re-iterable stream (`data.tasks.EvalExamples`), read once
      per evaluation; a one-shot iterator is read into a list here.
    vocabulary: the seqio vocabulary (ids -> text).
    graphdef: the model's graphdef; `predict(states)` takes the matching
      tuple of states (e.g. from `trainer.split_model`).
    input_length: prompt budget (TASK_FEATURE_LENGTHS["inputs"]).
    max_decode_len: generated tokens at most.
    batch_size: examples per decode call (a multiple of the batch shards).
    mesh: optional mesh; batches are placed by logical axes.
  """

  def __init__(self, examples: Iterable, vocabulary, graphdef, *, input_length: int,
               max_decode_len: int, batch_size: int, mesh=None):
    if iter(examples) is examples:  # every evaluation needs a fresh pass
      examples = list(examples)
    if isinstance(examples, (list, tuple)) and not examples:
      raise ValueError("Evaluator needs at least one example")
    self.examples = examples
    self.vocabulary = vocabulary
    self.input_length = input_length + 1  # the leading 0 of the shifted inputs
    self.batch_size = batch_size
    self.mesh = mesh
    self.decode_fn = decoding.make_decode_fn(graphdef, max_decode_len,
                                             eos_id=vocabulary.eos_id, pad_id=vocabulary.pad_id)
    if mesh is not None:
      sharding.check_decode_batch(batch_size, mesh,
                                  "the evaluation batch_size (evaluate.batch_size or "
                                  "train.eval_batch_size)")
    shard, num_shards = (0, 1) if mesh is None else trainer.data_shard(mesh, batch_size)
    rows = batch_size // num_shards
    self.rows = (shard * rows, shard * rows + rows)  # this process's rows of a batch
    self.num_shards = num_shards
    self.decoded_by: list[int] = []  # process that decoded each example (after predict)

  def _local_rows(self, out: jax.Array) -> np.ndarray:
    """This process's rows [lo, hi) of a global [B, T] array, as numpy."""
    lo, hi = self.rows
    local = np.zeros((hi - lo,) + out.shape[1:], out.dtype)
    for s in out.addressable_shards:
      r = s.index[0]
      start, stop = r.start or 0, out.shape[0] if r.stop is None else r.stop
      a, b = max(start, lo), min(stop, hi)
      if a < b:
        local[a - lo:b - lo] = np.asarray(s.data)[a - start:b - start]
    return local

  def _decode_batch(self, states, chunk) -> list[str]:
    """Decodes this process's rows of one global batch (all processes call it)."""
    lo, hi = self.rows
    prompts = [[0] + list(ex.input_ids) for ex in chunk[lo:hi]]
    prompts += [[0]] * (hi - lo - len(prompts))  # pad the last batch
    toks, mask = decoding.left_pad(prompts, self.input_length, self.vocabulary.pad_id)
    if self.mesh is None:
      out = np.asarray(self.decode_fn(tuple(states), toks, mask))
    else:
      sh = sharding.named_sharding(("batch", "length"), (self.batch_size, toks.shape[1]),
                                   self.mesh)
      toks, mask = (jax.make_array_from_process_local_data(sh, x) for x in (toks, mask))
      out = self.decode_fn(tuple(states), toks, mask)
      out_sh = sharding.named_sharding(("batch", "length"), out.shape, self.mesh)
      if not out.sharding.is_equivalent_to(out_sh, out.ndim):
        out = jax.device_put(out, out_sh)
      out = self._local_rows(out)
    return [self.vocabulary.decode(decoding.strip(ids, self.vocabulary.eos_id,
                                                  self.vocabulary.pad_id))
            for ids in out[:max(0, len(chunk) - lo)]]

  def batches(self) -> Iterator[list]:
    """One pass over the examples, `batch_size` at a time (the last may be short)."""
    it = iter(self.examples)
    while chunk := list(itertools.islice(it, self.batch_size)):
      yield chunk

  def _pass(self, states) -> tuple[list[tuple], list[str]]:
    """Decodes one pass: ((task, id, prompt, references, category) per example, predictions)."""
    infos, mine = [], []  # mine: (example index, prediction) decoded here
    for chunk in self.batches():
      preds = self._decode_batch(states, chunk)
      mine += [(len(infos) + self.rows[0] + i, p) for i, p in enumerate(preds)]
      infos += [(ex.task, ex.id, ex.prompt, list(ex.references), ex.category) for ex in chunk]
    if not infos:
      raise ValueError("Evaluator needs at least one example (the evaluation stream is empty)")
    if jax.process_count() == 1:
      self.decoded_by = [0] * len(mine)
      return infos, [p for _, p in mine]
    return infos, self._gather(mine, len(infos))

  def predict(self, states) -> list[str]:
    """Decoded strings, one per example, on every process (see the module doc)."""
    return self._pass(states)[1]

  def _gather(self, mine: list, total: int) -> list[str]:
    """All processes' (index, prediction) pairs, merged in example order."""
    data = np.frombuffer(json.dumps(mine).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([data.size], np.int32)).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:data.size] = data
    every = np.asarray(multihost_utils.process_allgather(buf))
    preds, self.decoded_by = [None] * total, [-1] * total
    for p in range(every.shape[0]):  # processes holding the same rows: first wins
      for i, pred in json.loads(every[p, :sizes[p]].tobytes()):
        if preds[i] is None:
          preds[i], self.decoded_by[i] = pred, p
    missing = [i for i, x in enumerate(preds) if x is None]
    if missing:
      raise RuntimeError(f"evaluation: examples {missing[:5]} were decoded by no process")
    return preds

  def evaluate(self, states) -> tuple[dict, list[dict]]:
    """(grouped metrics, per-example records) of the model `states`."""
    t0 = time.time()
    infos, preds = self._pass(states)
    refs = [refs for _, _, _, refs, _ in infos]
    grouped = metrics_lib.grouped_sni_metrics(
        refs, preds, [info[0] for info in infos], [info[4] for info in infos])
    records = []
    for (task, id_, prompt, ex_refs, _), pred, proc in zip(infos, preds, self.decoded_by):
      score = metrics_lib.sni_metrics([ex_refs], [pred])
      records.append({"task": task, "id": id_, "prompt": prompt, "prediction": pred,
                      "references": ex_refs, "score": score, "process": proc})
    grouped["num_examples"] = len(preds)
    grouped["seconds"] = time.time() - t0
    return grouped, records
