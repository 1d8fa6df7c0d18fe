"""SNI metrics as the official evaluation script (default English track).

- ROUGE-L: F-measure of `rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)`
  between the raw prediction and each reference.
- Exact match: equality after lower-casing, deleting `string.punctuation` and
  joining whitespace-split tokens with one space.
- Per instance the maximum over its references; the mean over instances
  times 100, rounded to 4 decimals; grouped by task and by category.

No TensorFlow.
"""

from __future__ import annotations

import collections
import functools
import string
from typing import Sequence

from mode_jax.data import records

_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """Lower-case, drop ASCII punctuation, collapse whitespace (official order)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
  return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
  """1.0 when the normalised strings are equal, else 0.0."""
  return float(normalize_answer(prediction) == normalize_answer(reference))


@functools.lru_cache(maxsize=1)
def _scorer():
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
  """ROUGE-L F-measure in [0, 1] on the raw strings."""
  return _scorer().score(reference, prediction)["rougeL"].fmeasure


def _check(references, predictions):
  if len(references) != len(predictions):
    raise ValueError(f"{len(references)} references vs {len(predictions)} predictions")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or not refs:
      raise ValueError(f"references[{i}] must be a non-empty list of strings, got {refs!r}")


def sni_metrics(references: Sequence[Sequence[str]],
                predictions: Sequence[str]) -> dict[str, float]:
  """Official SNI ROUGE-L and exact match on the 0-100 scale.

  Args:
    references: per instance, the list of reference outputs.
    predictions: per instance, the decoded prediction.

  Returns:
    {"rougeL": float, "exact_match": float}, each rounded to 4 decimals.
  """
  _check(references, predictions)
  if not predictions:
    return {"rougeL": 0.0, "exact_match": 0.0}
  em = sum(max(exact_match(p, r) for r in refs) for refs, p in zip(references, predictions))
  rl = sum(max(rouge_l(p, r) for r in refs) for refs, p in zip(references, predictions))
  n = len(predictions)
  return {"rougeL": round(100.0 * rl / n, 4), "exact_match": round(100.0 * em / n, 4)}


def grouped_sni_metrics(references: Sequence[Sequence[str]], predictions: Sequence[str],
                        tasks: Sequence[str], categories: Sequence[str]) -> dict:
  """Metrics overall, per task and per category.

  Args:
    references, predictions: as in `sni_metrics`.
    tasks: task name of each instance.
    categories: category of each instance (normalised here: lower-cased,
      spaces to underscores, so "Question Answering" -> "question_answering").

  Returns:
    {"overall": {...}, "per_task": {task: {...}}, "per_category": {cat: {...}}}
    where each {...} is the dict of `sni_metrics`.
  """
  _check(references, predictions)
  if not len(tasks) == len(categories) == len(predictions):
    raise ValueError("tasks, categories and predictions must have the same length")
  by_task, by_cat = collections.defaultdict(list), collections.defaultdict(list)
  for i, (t, c) in enumerate(zip(tasks, categories)):
    by_task[t].append(i)
    by_cat[records.normalize_category(c)].append(i)

  def sub(idx):
    return sni_metrics([references[i] for i in idx], [predictions[i] for i in idx])

  return {"overall": sni_metrics(references, predictions),
          "per_task": {t: sub(idx) for t, idx in sorted(by_task.items())},
          "per_category": {c: sub(idx) for c, idx in sorted(by_cat.items())}}


def seqio_metric_fn(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict:
  """A seqio `metric_fns` entry: targets are the reference lists.

  The SNI tasks' `postprocess_fn` returns the example's `references` for
  targets, so each target is the list of all references.
  """
  targets = [[t] if isinstance(t, str) else list(t) for t in targets]
  return sni_metrics(targets, list(predictions))
