"""Super-NaturalInstructions: task files, split files and task selection.

The input is a local copy of the SNI repository layout:

    <sni_dir>/tasks/<task>.json
    <sni_dir>/splits/default/{train,test,excluded}_tasks.txt

Nothing is downloaded. A partial copy (such as `data/sni_sample`, whose split
files list tasks it does not hold) is accepted only with `allow_missing=True`;
the missing tasks are then counted, logged and returned in `Selection.missing`.

Public API: `read_task`, `list_tasks`, `select_tasks`, `format_prompt`.
Pure Python (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Sequence

from mode_jax import files
from mode_jax.data import prompts
from mode_jax.data import records

read_task = records.read_task
format_prompt = prompts.format_prompt
SniFormatError = records.SniFormatError
TaskRecord = records.TaskRecord

SPLITS = ("train", "test", "excluded")
# The paper's case study: one task per category (METHODS.md). Full names,
# since ids are not unique (task672 names two tasks of the train split).
CASE_STUDY = (
    "task024_cosmosqa_answer_generation", "task025_cosmosqa_incorrect_answer_generation",
    "task074_squad1.1_question_generation", "task089_swap_words_verification",
    "task114_is_the_given_word_longest", "task141_odd-man-out_classification_category",
    "task155_count_nouns_verbs", "task192_hotpotqa_sentence_generation",
    "task269_csrg_counterfactual_story_generation",
    "task279_stereoset_classification_stereotype",
    "task291_semeval_2020_task4_commonsense_validation",
    "task622_replace_alphabets_in_a_list_by_their_position_in_english_alphabet",
    "task672_nummersense", "task1711_poki_text_generation",
    "task1729_personachat_generate_next")
_INSTANCES_KEY = re.compile(rb'"Instances"\s*:')


def task_path(sni_dir: str | os.PathLike, name: str) -> str:
  """Path of the task file `name` under `sni_dir`."""
  return files.join(sni_dir, "tasks", f"{name}.json")


def read_split(sni_dir: str | os.PathLike, split: str = "train") -> list[str]:
  """Task names of `splits/default/<split>_tasks.txt`, in file order."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; allowed: {SPLITS}")
  path = files.join(sni_dir, "splits", "default", f"{split}_tasks.txt")
  if not files.exists(path):
    raise FileNotFoundError(f"SNI split file not found: {path} (is sni_dir the root of an "
                            "SNI copy, with tasks/ and splits/default/?)")
  return [line.strip() for line in files.read_text(path).splitlines() if line.strip()]


def read_header(path: str | os.PathLike) -> dict:
  """Reads the fields before `Instances` without parsing the instances.

  The SNI files put `Instances` last, so the header (languages, categories,
  definition) is a small prefix even of a 100 MB file. Falls back to a full
  parse when the prefix does not end cleanly.

  Raises:
    SniFormatError: invalid JSON (naming the file).
  """
  chunks = []
  with files.open_file(path, "rb") as f:
    while True:
      chunk = f.read(1 << 16)
      if not chunk:
        break
      chunks.append(chunk)
      head = b"".join(chunks)
      m = _INSTANCES_KEY.search(head)
      if m:
        try:
          return json.loads(head[:m.start()].rstrip().rstrip(b",") + b"}")
        except (json.JSONDecodeError, UnicodeDecodeError):
          break
  try:
    return json.loads(files.read_bytes(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise records.SniFormatError(path, f"invalid JSON: {e}") from e


def header_is_english(path: str | os.PathLike) -> bool:
  """True when the three language fields of the file are exactly ["English"]."""
  head = read_header(path)
  return all(head.get(f) == ["English"] for f in
             ("Input_language", "Output_language", "Instruction_language"))


@dataclasses.dataclass(frozen=True)
class Selection:
  """Result of a task selection.

  Attributes:
    names: selected task names (present, and English if asked), in order.
    missing: requested tasks whose file is absent (only with allow_missing).
    non_english: present tasks dropped by the English filter.
  """
  names: tuple[str, ...]
  missing: tuple[str, ...] = ()
  non_english: tuple[str, ...] = ()


def resolve_ids(sni_dir: str | os.PathLike, ids: Sequence[str]) -> list[str]:
  """Maps task ids (`task024`) or full names to full names via all split files.

  Full names (with "_") and ids found in no split file are returned unchanged.

  Raises:
    ValueError: an id names several tasks (task672, task184, ... do).
  """
  known = {}
  for split in SPLITS:
    try:
      for name in read_split(sni_dir, split):
        known.setdefault(name.split("_", 1)[0], set()).add(name)
    except FileNotFoundError:
      pass
  out = []
  for i in ids:
    names = sorted(known.get(i, ())) if "_" not in i else [i]
    if len(names) > 1:
      raise ValueError(f"SNI task id {i!r} is ambiguous: {names}; use the full name")
    out.append(names[0] if names else i)
  return out


def select_tasks(sni_dir: str | os.PathLike, split: str | None = "train",
                 tasks: Sequence[str] | None = None, english_only: bool = True,
                 allow_missing: bool = False) -> Selection:
  """Selects tasks from a split file or an explicit list.

  Args:
    sni_dir: root of the SNI copy.
    split: "train" (the paper's default), "test" or "excluded"; ignored when
      `tasks` is given.
    tasks: explicit task names or ids (`task024`); overrides `split`.
    english_only: keep tasks whose input, output and instruction languages
      are all exactly ["English"] (756 of the default train split).
    allow_missing: skip (count, log, report) tasks whose file is absent;
      without it a missing file raises.

  Returns:
    The `Selection`.

  Raises:
    FileNotFoundError: a task file is missing and `allow_missing` is False.
  """
  names = resolve_ids(sni_dir, tasks) if tasks is not None else read_split(sni_dir, split)
  present, missing, non_english = [], [], []
  for name in dict.fromkeys(names):
    path = task_path(sni_dir, name)
    if not files.exists(path):
      if not allow_missing:
        raise FileNotFoundError(
            f"SNI task file missing: {path} (task {name!r}). Pass allow_missing=True "
            "to use a partial copy; missing tasks are then counted and reported.")
      missing.append(name)
    elif english_only and not header_is_english(path):
      non_english.append(name)
    else:
      present.append(name)
  if missing:
    logging.warning("SNI: %d of %d requested tasks are missing from %s (allow_missing): %s",
                    len(missing), len(names), sni_dir, ", ".join(missing[:10]) +
                    (" ..." if len(missing) > 10 else ""))
  return Selection(tuple(present), tuple(missing), tuple(non_english))


def list_tasks(sni_dir: str | os.PathLike, split: str = "train", english_only: bool = True,
               allow_missing: bool = False) -> list[str]:
  """Task names of a split (English-only by default), as the paper selects them.

  See `select_tasks` for the arguments; this returns `Selection.names`.
  """
  return list(select_tasks(sni_dir, split, None, english_only, allow_missing).names)
