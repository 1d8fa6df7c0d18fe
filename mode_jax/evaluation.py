"""Decode-and-score evaluation on SNI instances (ROUGE-L, exact match).

The feature converters train the model on `[0] + inputs + targets + [EOS]`
(shifted right), so a prompt is decoded from `[0] + input_ids`, left-padded
to the inputs budget, and generation stops at EOS or `max_decode_len`.
Metrics are the official SNI ones, overall, per task and per category.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from mode_jax import decoding
from mode_jax import sharding
from mode_jax.data import metrics as metrics_lib


class Evaluator:
  """Greedy-decodes a fixed list of examples and scores them.

  Args:
    examples: `mode_jax.data.prepare.PreparedExample`s with token ids.
    vocabulary: the seqio vocabulary (ids -> text).
    graphdef: the model's graphdef; `predict(states)` takes the matching
      tuple of states (e.g. from `trainer.split_model`).
    input_length: prompt budget (TASK_FEATURE_LENGTHS["inputs"]).
    max_decode_len: generated tokens at most.
    batch_size: examples per decode call (a multiple of the batch shards).
    mesh: optional mesh; batches are placed by logical axes.
  """

  def __init__(self, examples: Sequence, vocabulary, graphdef, *, input_length: int,
               max_decode_len: int, batch_size: int, mesh=None):
    if not examples:
      raise ValueError("Evaluator needs at least one example")
    self.examples = list(examples)
    self.vocabulary = vocabulary
    self.input_length = input_length + 1  # the leading 0 of the shifted inputs
    self.batch_size = batch_size
    self.mesh = mesh
    self.decode_fn = decoding.make_decode_fn(graphdef, max_decode_len,
                                             eos_id=vocabulary.eos_id, pad_id=vocabulary.pad_id)

  def _batches(self):
    n = len(self.examples)
    for start in range(0, n, self.batch_size):
      chunk = self.examples[start:start + self.batch_size]
      prompts = [[0] + list(ex.input_ids) for ex in chunk]
      prompts += [[0]] * (self.batch_size - len(chunk))  # pad the last batch
      toks, mask = decoding.left_pad(prompts, self.input_length, self.vocabulary.pad_id)
      yield chunk, toks, mask

  def predict(self, states) -> list[str]:
    """Decoded strings, one per example."""
    preds = []
    for chunk, toks, mask in self._batches():
      if self.mesh is not None:
        sh = sharding.named_sharding(("batch", "length"), toks.shape, self.mesh)
        toks, mask = jax.device_put(toks, sh), jax.device_put(mask, sh)
      out = np.asarray(self.decode_fn(tuple(states), toks, mask))
      for i in range(len(chunk)):
        ids = decoding.strip(out[i], self.vocabulary.eos_id, self.vocabulary.pad_id)
        preds.append(self.vocabulary.decode(ids))
    return preds

  def evaluate(self, states) -> tuple[dict, list[dict]]:
    """(grouped metrics, per-example records) of the model `states`."""
    t0 = time.time()
    preds = self.predict(states)
    refs = [list(ex.references) for ex in self.examples]
    grouped = metrics_lib.grouped_sni_metrics(
        refs, preds, [ex.task for ex in self.examples], [ex.category for ex in self.examples])
    records = []
    for ex, pred in zip(self.examples, preds):
      score = metrics_lib.sni_metrics([list(ex.references)], [pred])
      records.append({"task": ex.task, "id": ex.id, "prompt": ex.prompt, "prediction": pred,
                      "references": list(ex.references), "score": score})
    grouped["num_examples"] = len(preds)
    grouped["seconds"] = time.time() - t0
    return grouped, records
