"""Typed records of one Super-NaturalInstructions task file, and their parser.

A task file (`tasks/<task>.json` in the SNI repository) is parsed into a
frozen `TaskRecord`. Every field the pipeline relies on is checked; a bad
file raises `SniFormatError` naming the file and the field. Bad *instances*
(missing id, input or outputs) raise too, unless `on_error="skip"`: then they
are dropped, counted in `TaskRecord.skipped` and logged, never silently.

This module is pure Python (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

from mode_jax import files

ON_ERROR = ("raise", "skip")


class SniFormatError(ValueError):
  """A task file that does not follow the SNI format."""

  def __init__(self, path: str | os.PathLike, message: str):
    self.path = str(path)
    super().__init__(f"{self.path}: {message}")


@dataclasses.dataclass(frozen=True)
class Example:
  """A positive or negative demonstration of the task definition."""
  input: str
  output: str
  explanation: str | None = None


@dataclasses.dataclass(frozen=True)
class Instance:
  """One evaluation/training instance with all its reference outputs."""
  id: str
  input: str
  outputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TaskRecord:
  """One SNI task.

  Attributes:
    name: task name, the file name without `.json`.
    definition: the instruction (`Definition[0]` of the file, unstripped).
    positive_examples: demonstrations, in file order.
    negative_examples: counter-demonstrations, in file order.
    instances: the instances kept, in file order.
    categories: `Categories` (the first one is the task's category).
    input_language, output_language, instruction_language: the three
      language fields.
    source: `Source`.
    path: the file the record was read from.
    skipped: number of bad instances dropped under `on_error="skip"`.
  """
  name: str
  definition: str
  positive_examples: tuple[Example, ...]
  negative_examples: tuple[Example, ...]
  instances: tuple[Instance, ...]
  categories: tuple[str, ...]
  input_language: tuple[str, ...]
  output_language: tuple[str, ...]
  instruction_language: tuple[str, ...]
  source: tuple[str, ...] = ()
  path: str = ""
  skipped: int = 0

  @property
  def category(self) -> str:
    """The first category, as the official metrics group it (e.g. `misc.`)."""
    return normalize_category(self.categories[0])

  @property
  def is_english(self) -> bool:
    """True when all three language fields are exactly ["English"]."""
    return (self.input_language == self.output_language ==
            self.instruction_language == ("English",))


def normalize_category(category: str) -> str:
  """Lower-cases and joins whitespace-split words with "_" (official script)."""
  return "_".join(category.lower().split())


def str_list(path, obj: dict, field: str, *, nonempty: bool = True) -> tuple[str, ...]:
  """The non-empty list of strings `obj[field]`, or a SniFormatError naming it."""
  value = obj.get(field)
  if value is None:
    raise SniFormatError(path, f"missing field {field!r}")
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise SniFormatError(
        path, f"field {field!r} must be a list of strings, got {type(value).__name__}"
        f" {_short(value)}")
  if nonempty and not value:
    raise SniFormatError(path, f"field {field!r} is empty")
  return tuple(value)


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _examples(path, obj: dict, field: str) -> tuple[Example, ...]:
  value = obj.get(field)
  if value is None:
    raise SniFormatError(path, f"missing field {field!r}")
  if not isinstance(value, list):
    raise SniFormatError(path, f"field {field!r} must be a list, got {type(value).__name__}")
  out = []
  for i, ex in enumerate(value):
    if ex == "-":  # A few SNI files mark "no negative examples" with ["-"].
      continue
    if (not isinstance(ex, dict) or not isinstance(ex.get("input"), str)
        or not isinstance(ex.get("output"), str)):
      raise SniFormatError(
          path, f"{field}[{i}] must be an object with string 'input' and 'output', got "
          f"{_short(ex)}")
    expl = ex.get("explanation")
    out.append(Example(ex["input"], ex["output"], expl if isinstance(expl, str) else None))
  return tuple(out)


def _instance(path, i: int, inst) -> Instance:
  """Validates one instance; raises SniFormatError naming what is wrong."""
  where = f"Instances[{i}]"
  if not isinstance(inst, dict):
    raise SniFormatError(path, f"{where} must be an object, got {_short(inst)}")
  iid = inst.get("id")
  if not isinstance(iid, str) or not iid:
    raise SniFormatError(path, f"{where} has no string field 'id'")
  where = f"{where} (id {iid!r})"
  if not isinstance(inst.get("input"), str):
    raise SniFormatError(path, f"{where} has no string field 'input'")
  outputs = inst.get("output")
  if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
    raise SniFormatError(path, f"{where}: field 'output' must be a list of strings, got "
                         f"{_short(outputs)}")
  if not outputs:
    raise SniFormatError(path, f"{where} has no output (empty 'output' list)")
  # An empty-string reference is kept: the original data has some (task1564).
  return Instance(iid, inst["input"], tuple(outputs))


def parse_task(obj, path: str | os.PathLike, on_error: str = "raise") -> TaskRecord:
  """Validates a decoded task object and returns its `TaskRecord`.

  Args:
    obj: the decoded JSON object of one task file.
    path: the file it came from (for error messages and the task name).
    on_error: "raise" (default) or "skip" bad instances (counted, logged).

  Returns:
    The typed record.

  Raises:
    SniFormatError: naming `path` and the offending field.
  """
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error={on_error!r}; allowed: {ON_ERROR}")
  if not isinstance(obj, dict):
    raise SniFormatError(path, f"top level must be a JSON object, got {type(obj).__name__}")
  definition = str_list(path, obj, "Definition")
  categories = str_list(path, obj, "Categories")
  langs = [str_list(path, obj, f) for f in
           ("Input_language", "Output_language", "Instruction_language")]
  source = str_list(path, obj, "Source", nonempty=False)
  pos = _examples(path, obj, "Positive Examples")
  neg = _examples(path, obj, "Negative Examples")
  raw = obj.get("Instances")
  if not isinstance(raw, list):
    raise SniFormatError(path, "missing field 'Instances'" if raw is None else
                         f"field 'Instances' must be a list, got {type(raw).__name__}")
  if not raw:
    raise SniFormatError(path, "field 'Instances' is empty (a task needs at least one)")
  instances, seen, skipped = [], set(), 0
  for i, inst in enumerate(raw):
    try:
      rec = _instance(path, i, inst)
      if rec.id in seen:
        raise SniFormatError(path, f"Instances[{i}]: duplicate id {rec.id!r}")
    except SniFormatError as e:
      if on_error == "raise":
        raise
      skipped += 1
      logging.warning("SNI: skipping bad instance: %s", e)
      continue
    seen.add(rec.id)
    instances.append(rec)
  if skipped:
    logging.warning("SNI: %s: skipped %d of %d instances", path, skipped, len(raw))
  if not instances:
    raise SniFormatError(path, f"no valid instance in 'Instances' (all {skipped} skipped)")
  name = files.basename(path).removesuffix(".json")
  return TaskRecord(
      name=name, definition=definition[0], positive_examples=pos,
      negative_examples=neg, instances=tuple(instances), categories=categories,
      input_language=langs[0], output_language=langs[1], instruction_language=langs[2],
      source=source, path=str(path), skipped=skipped)


def load_json(path: str | os.PathLike, data: bytes | None = None):
  """Decodes a task file's bytes as strict UTF-8 JSON (a UTF-8 BOM is allowed).

  Args:
    path: the file (read when `data` is None; always named in errors).
    data: its bytes, when the caller has them already.

  Returns:
    The decoded JSON value (any type: callers check the top level).

  Raises:
    SniFormatError: bytes that are not UTF-8, invalid JSON, nesting deeper
      than the parser allows, or strings holding lone surrogates (`\\ud800`),
      which no tokenizer can encode.
  """
  if data is None:
    data = files.read_bytes(path)
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise SniFormatError(path, f"not valid UTF-8 at byte {e.start} "
                         f"({data[e.start:e.start + 4]!r}); SNI files are UTF-8") from e
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise SniFormatError(path, f"invalid JSON: {e}") from e
  except RecursionError as e:
    raise SniFormatError(path, "invalid JSON: nesting deeper than the JSON parser "
                         "allows") from e
  if _SURROGATE_ESCAPE.search(text):  # Cheap test first: only escapes make surrogates.
    _check_surrogates(path, obj)
  return obj


# A \\uD800-\\uDFFF escape; a valid pair decodes to one code point and is fine.
_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")


def _check_surrogates(path, obj) -> None:
  """Raises naming the field of the first string with an unpaired surrogate."""
  stack = [(obj, "")]
  while stack:  # Iterative: nesting depth is bounded only by the parser.
    value, where = stack.pop()
    if isinstance(value, dict):
      stack += [(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
      bad_keys = [k for k in value if not _encodable(k)]
      if bad_keys:
        raise SniFormatError(path, f"key {bad_keys[0]!r} in {where or 'top level'} holds an "
                             "unpaired surrogate (invalid Unicode)")
    elif isinstance(value, list):
      stack += [(v, f"{where}[{i}]") for i, v in enumerate(value)]
    elif isinstance(value, str) and not _encodable(value):
      raise SniFormatError(path, f"field {where!r} holds an unpaired surrogate "
                           f"(invalid Unicode): {_short(value)}")


def _encodable(text: str) -> bool:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


def read_task(path: str | os.PathLike, on_error: str = "raise") -> TaskRecord:
  """Reads and validates one SNI task file.

  `NaN` values (seven original files have `"URL": [NaN]`) are accepted, as
  Python's `json` accepts them.

  Args:
    path: `.../tasks/<task>.json`.
    on_error: "raise" or "skip" bad instances (the count is in `.skipped`).

  Returns:
    The `TaskRecord`.

  Raises:
    FileNotFoundError: the file does not exist.
    SniFormatError: not UTF-8, invalid JSON or Unicode, too deeply nested,
      or a missing / malformed field, naming the file and the field.
  """
  return parse_task(load_json(path), path, on_error)
