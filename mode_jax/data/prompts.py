"""Tk-Instruct prompts (METHODS.md, "Prompt format"), byte for byte.

    prompt = name + definition + positives + negatives + query

with `name = "<task>. "` (off by default), `definition = "Definition: " + ...`
and `query = "Now complete the following example -\\nInput: ...\\nOutput: "`.

Token budget (`fit_prompt`): demonstrations are added one by one (positives,
then negatives) only while the whole prompt stays within `max_tokens`; the
first one that does not fit stops that kind. A prompt still over budget
without any demonstration is truncated from the LEFT: its last `max_tokens`
token ids are kept, so the query and its trailing "Output: " stay intact and
the beginning of the definition is lost. Truncations are counted by callers
(`FittedPrompt.truncated`).

Pure Python (no TensorFlow); works on any object with the `TaskRecord` /
`Instance` attributes.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Callable, Sequence


def _end(text: str) -> str:
  """Appends "." unless `text` already ends in ASCII punctuation."""
  return text if text and text[-1] in string.punctuation else text + "."


def definition_str(task, definition: bool = True, add_task_name: bool = False) -> str:
  """The prompt prefix: optional `"<name>. "` then `"Definition: ...\\n\\n"`."""
  name = f"{task.name}. " if add_task_name else ""
  if not definition:
    return name
  return name + _end("Definition: " + task.definition.strip()) + "\n\n"


def example_str(kind: str, index: int, example, add_explanation: bool = False) -> str:
  """One demonstration block; `kind` is "Positive" or "Negative", index 1-based."""
  s = f" {kind} Example {index} -\n"
  s = _end(s + "Input: " + example.input.strip()) + "\n"
  s = _end(s + " Output: " + example.output.strip()) + "\n"
  if add_explanation and example.explanation is not None:
    s = _end(s + " Explanation: " + example.explanation.strip()) + "\n"
  return s + "\n"


def query_str(instance) -> str:
  """`"Now complete the following example -\\nInput: ...\\nOutput: "`."""
  s = _end("Now complete the following example -\nInput: " + instance.input.strip())
  return s + "\nOutput: "


def format_prompt(task, instance, num_pos: int = 2, num_neg: int = 0,
                  add_explanation: bool = False, definition: bool = True,
                  add_task_name: bool = False) -> str:
  """The Tk-Instruct prompt of `instance` (no token budget).

  Args:
    task: a `TaskRecord` (name, definition, positive/negative examples).
    instance: an `Instance` (its `input` is used).
    num_pos: number of positive examples (the first ones of the file).
    num_neg: number of negative examples.
    add_explanation: append each example's explanation.
    definition: include the definition (False: demonstrations only).
    add_task_name: prefix `"<task name>. "`.

  Returns:
    The prompt string, ending in `"Output: "`.
  """
  return (definition_str(task, definition, add_task_name)
          + "".join(example_str("Positive", i + 1, ex, add_explanation)
                    for i, ex in enumerate(task.positive_examples[:num_pos]))
          + "".join(example_str("Negative", i + 1, ex, add_explanation)
                    for i, ex in enumerate(task.negative_examples[:num_neg]))
          + query_str(instance))


@dataclasses.dataclass(frozen=True)
class FittedPrompt:
  """A prompt fitted to a token budget.

  Attributes:
    text: the prompt (decoded from `ids` when truncated).
    ids: its token ids, at most the budget.
    num_pos: positive examples kept.
    num_neg: negative examples kept.
    truncated: True when left truncation was needed.
  """
  text: str
  ids: tuple[int, ...]
  num_pos: int
  num_neg: int
  truncated: bool


def fit_prompt(task, instance, encode: Callable[[str], Sequence[int]],
               decode: Callable[[Sequence[int]], str], max_tokens: int,
               num_pos: int = 2, num_neg: int = 0, add_explanation: bool = False,
               definition: bool = True, add_task_name: bool = False) -> FittedPrompt:
  """Builds the prompt within `max_tokens` tokens (rule in the module docstring).

  Args:
    task, instance, num_pos, num_neg, add_explanation, definition,
      add_task_name: as in `format_prompt`.
    encode: str -> token ids (the SentencePiece model of the run).
    decode: token ids -> str.
    max_tokens: the input token budget (TASK_FEATURE_LENGTHS["inputs"]).

  Returns:
    The `FittedPrompt`.
  """
  if max_tokens < 1:
    raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
  head = definition_str(task, definition, add_task_name)
  query = query_str(instance)
  pos = [example_str("Positive", i + 1, ex, add_explanation)
         for i, ex in enumerate(task.positive_examples[:num_pos])]
  neg = [example_str("Negative", i + 1, ex, add_explanation)
         for i, ex in enumerate(task.negative_examples[:num_neg])]
  text = head + "".join(pos) + "".join(neg) + query
  ids = list(encode(text))
  if len(ids) > max_tokens and (pos or neg):  # Common case: everything fits at once.
    kept_pos, kept_neg = [], []
    for block in pos:
      if len(encode(head + "".join(kept_pos) + block + query)) > max_tokens:
        break
      kept_pos.append(block)
    for block in neg:
      if len(encode(head + "".join(kept_pos) + "".join(kept_neg) + block + query)) > max_tokens:
        break
      kept_neg.append(block)
    pos, neg = kept_pos, kept_neg
    text = head + "".join(pos) + "".join(neg) + query
    ids = list(encode(text))
  truncated = len(ids) > max_tokens
  if truncated:
    ids = ids[-max_tokens:]
    text = decode(ids)
  return FittedPrompt(text, tuple(ids), len(pos), len(neg), truncated)
