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


LANGUAGE_FIELDS = ("Input_language", "Output_language", "Instruction_language")


def read_header(path: str | os.PathLike) -> dict:
  """The task's fields other than `Instances`, without parsing the instances if it can.

  The SNI files put `Instances` near the end, so the header (languages,
  categories, definition) is usually a small prefix even of a 100 MB file.
  That fast path is taken only when the prefix parses and holds all three
  language fields; otherwise (another key order, a missing field, a prefix
  that does not end cleanly) the whole file is parsed, so the answer never
  depends on the order of the keys.

  Raises:
    SniFormatError: not UTF-8, invalid JSON, or a top level that is not an
      object (naming the file).
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
        prefix = head[:m.start()].rstrip().rstrip(b",") + b"}"
        try:
          obj = json.loads(prefix.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
          break
        if isinstance(obj, dict) and all(k in obj for k in LANGUAGE_FIELDS):
          return obj
        break
  obj = records.load_json(path)
  if not isinstance(obj, dict):
    raise records.SniFormatError(
        path, f"top level must be a JSON object, got {type(obj).__name__}")
  obj.pop("Instances", None)
  return obj


def header_is_english(path: str | os.PathLike) -> bool:
  """True when the three language fields of the file are exactly ["English"].

  Raises:
    SniFormatError: a language field is missing or not a list of strings
      (such a file is named, never silently dropped as non-English).
  """
  head = read_header(path)
  langs = [records.str_list(path, head, f) for f in LANGUAGE_FIELDS]
  return all(lang == ("English",) for lang in langs)


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

  @property
  def dropped(self) -> dict[str, str]:
    """{task: reason} of every requested task that was not selected."""
    return {**{t: "task file missing (allow_missing)" for t in self.missing},
            **{t: "not English (language fields are not all ['English'])"
               for t in self.non_english}}


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

  Every task dropped (missing, not English) is counted and logged with its
  reason; `Selection.dropped` maps each to its reason.

  Raises:
    FileNotFoundError: a task file is missing and `allow_missing` is False.
    SniFormatError: a task file whose header cannot be read (not UTF-8,
      invalid JSON, a missing or mistyped language field), naming it.
  """
  names = resolve_ids(sni_dir, tasks) if tasks is not None else read_split(sni_dir, split)
  # One listing of tasks/ says which files exist: on a bucket one request per
  # 1,000 names, where an existence check per task costs two or three.
  listed = set(files.listdir(files.join(sni_dir, "tasks")))
  present, missing, non_english = [], [], []
  for name in dict.fromkeys(names):
    path = task_path(sni_dir, name)
    if f"{name}.json" not in listed:
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
  if non_english:
    logging.warning("SNI: %d of %d requested tasks dropped as not English (english_only): %s",
                    len(non_english), len(names), ", ".join(non_english[:10]) +
                    (" ..." if len(non_english) > 10 else ""))
  return Selection(tuple(present), tuple(missing), tuple(non_english))


def list_tasks(sni_dir: str | os.PathLike, split: str = "train", english_only: bool = True,
               allow_missing: bool = False) -> list[str]:
  """Task names of a split (English-only by default), as the paper selects them.

  See `select_tasks` for the arguments; this returns `Selection.names`.
  """
  return list(select_tasks(sni_dir, split, None, english_only, allow_missing).names)
