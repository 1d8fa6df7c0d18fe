"""SniConfig: how SNI instances are split and turned into prompts."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from mode_jax.data import records

ON_ERROR = records.ON_ERROR


@dataclasses.dataclass(frozen=True)
class SniConfig:
  """Split, prompt and budget options of the SNI pipeline.

  Every field is part of the cache key of the prepared TFRecords.

  Attributes:
    seed: seed of the per-instance train/validation split (and of the choice
      of the training reference when an instance has several).
    eval_fraction: fraction of each task's instances in "validation" (0.1).
    max_train_per_task: cap on training instances per task (None: all).
    max_eval_per_task: cap on validation instances per task (None: all).
    max_test_per_task: instances of the "test" split per task, the first ones
      in file order (100, as the official SNI evaluation).
    num_pos: positive examples in the prompt (2).
    num_neg: negative examples in the prompt (0).
    add_explanation: add the examples' explanations.
    definition: include the definition.
    add_task_name: prefix `"<task name>. "`.
    max_input_tokens: prompt token budget; set it to
      TASK_FEATURE_LENGTHS["inputs"].
    on_error: "raise" on a bad instance, or "skip" it (counted and logged).
  """
  seed: int = 0
  eval_fraction: float = 0.1
  max_train_per_task: int | None = None
  max_eval_per_task: int | None = None
  max_test_per_task: int | None = 100
  num_pos: int = 2
  num_neg: int = 0
  add_explanation: bool = False
  definition: bool = True
  add_task_name: bool = False
  max_input_tokens: int = 896
  on_error: str = "raise"

  def __post_init__(self):
    if not isinstance(self.seed, int):
      raise ValueError(f"SniConfig.seed must be an int, got {self.seed!r}")
    if not 0.0 <= self.eval_fraction <= 1.0:
      raise ValueError(f"SniConfig.eval_fraction must be in [0, 1], got {self.eval_fraction}")
    for f in ("max_train_per_task", "max_eval_per_task", "max_test_per_task"):
      v = getattr(self, f)
      if v is not None and (not isinstance(v, int) or v < 0):
        raise ValueError(f"SniConfig.{f} must be None or an int >= 0, got {v!r}")
    for f in ("num_pos", "num_neg"):
      v = getattr(self, f)
      if not isinstance(v, int) or v < 0:
        raise ValueError(f"SniConfig.{f} must be an int >= 0, got {v!r}")
    if not isinstance(self.max_input_tokens, int) or self.max_input_tokens < 1:
      raise ValueError(
          f"SniConfig.max_input_tokens must be a positive int, got {self.max_input_tokens!r}")
    if self.on_error not in ON_ERROR:
      raise ValueError(f"SniConfig.on_error={self.on_error!r}; allowed: {ON_ERROR}")

  def prompt_kwargs(self) -> dict:
    """Keyword arguments of `prompts.format_prompt` / `fit_prompt`."""
    return dict(num_pos=self.num_pos, num_neg=self.num_neg,
                add_explanation=self.add_explanation, definition=self.definition,
                add_task_name=self.add_task_name)

  def split_key(self) -> str:
    """Hash of the fields that decide the instance counts of each split."""
    return _hash({f: getattr(self, f) for f in (
        "seed", "eval_fraction", "max_train_per_task", "max_eval_per_task",
        "max_test_per_task", "on_error")})

  def key(self) -> str:
    """Hash of every field."""
    return _hash(dataclasses.asdict(self))


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
