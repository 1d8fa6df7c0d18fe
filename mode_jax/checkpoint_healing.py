"""Run-checkpoint restores that heal: a damaged or incomplete step is named, skipped, moved aside.

A numbered directory `<checkpoints>/<n>` counts as a complete step only when
Orbax finalised it. orbax-checkpoint 0.12.8 writes each step into
`<n>.orbax-checkpoint-tmp-<t>` (never a step here), writes
`commit_success.txt` into it as the last act of the save and records
`commit_timestamp_nsecs` in its `_CHECKPOINT_METADATA`, then renames it to
`<n>` (local disks) or leaves it in place (buckets, where the commit file is
the only marker). A plain `<n>` without either mark is a half-written or
half-copied step.

`heals` wraps a `RunCheckpointer` restore method. Without an explicit step
it tries the steps newest first; a step that is incomplete, fails the file
checks (`check_step`: metadata present and valid JSON, no empty array
files, JSON items parse) or fails to read is reported with step, item, file
and what is wrong, moved aside as `<n>.damaged-<time>` (never deleted; only
for the trainer, which holds the run lock, and only on process 0), and the
previous step is tried. An explicit step (`--restore_step`) that cannot be
read raises `CheckpointDamaged` instead. A restore that fails for another
reason, such as a restore target of another shape (a changed adapter
config), is not damage: it raises unchanged and moves nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import re
import sys
import time
from typing import Any, Callable

from mode_jax import files

COMMIT_MARKER = "commit_success.txt"
STEP_METADATA = "_CHECKPOINT_METADATA"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Files inside an item directory that must hold valid JSON.
_JSON_FILES = ("_METADATA", "metadata")
# Read errors that mean the files are bad (TensorStore, Orbax, json), as
# opposed to a restore target that does not match (a changed config).
_DAMAGE = re.compile(
    r"DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|Error reading|Error decoding|error while reading|"
    r"[Cc]orrupt|[Uu]nexpected end|checksum|Expecting value|JSONDecodeError|Extra data|"
    r"Invalid control|Unterminated|No such file|Requested byte range")
# A restore target that does not match what is stored: never damage.
_MISMATCH = re.compile(r"not compatible with the stored|tree structure|do not match|"
                       r"[Mm]ismatch|Requested shape")
_PATH_IN_MESSAGE = re.compile(r"(?:file://)?(/[^\s\"'\]\[,;)]+)")


class CheckpointDamaged(RuntimeError):
  """An explicitly requested checkpoint step cannot be read."""


@dataclasses.dataclass(frozen=True)
class Damage:
  """What is wrong with one step: which item, which file, what."""
  step: int
  item: str | None
  file: str
  problem: str

  def __str__(self) -> str:
    item = f", item {self.item!r}" if self.item else ""
    return f"checkpoint step {self.step}{item}, file {self.file}: {self.problem}"


def step_dirs(directory: str) -> list[int]:
  """Steps with a plain numbered directory (complete or not), ascending."""
  return sorted(int(n) for n in files.listdir(directory) if n.isdigit())


def _json_problem(path: str) -> str | None:
  try:
    text = files.read_text(path)
  except (OSError, UnicodeDecodeError) as e:
    return f"unreadable ({e.__class__.__name__}: {e})"
  if not text.strip():
    return "empty (should hold JSON)"
  try:
    json.loads(text)
  except ValueError as e:
    return f"not valid JSON ({e})"
  return None


def _committed(step_dir: str) -> bool:
  if files.exists(files.join(step_dir, COMMIT_MARKER)):
    return True
  meta = files.join(step_dir, STEP_METADATA)  # Older Orbax: the commit time only.
  try:
    return json.loads(files.read_text(meta)).get("commit_timestamp_nsecs") is not None
  except (OSError, ValueError, AttributeError):
    return False


def _is_data_state(name: str) -> bool:
  return name.startswith("process_") and name.endswith(".json")


def check_step(directory: str, step: int) -> Damage | None:
  """File checks of one step, without reading arrays; None when nothing is wrong."""
  step_dir = files.join(directory, str(step))
  if not files.isdir(step_dir):
    return Damage(step, None, step_dir, "no such step directory")
  if not _committed(step_dir):
    return Damage(step, None, files.join(step_dir, COMMIT_MARKER),
                  "missing: the save never finished (incomplete step)")
  for item in files.listdir(step_dir):
    item_dir = files.join(step_dir, item)
    if not files.isdir(item_dir):
      continue
    names = files.listdir(item_dir)
    if not names:
      return Damage(step, item, item_dir, "empty item directory")
    is_array = any(n == "manifest.ocdbt" or n.startswith("ocdbt.process") or n == "d"
                   for n in names)
    if is_array and "_METADATA" not in names:
      return Damage(step, item, files.join(item_dir, "_METADATA"), "missing (array metadata)")
    # The data item holds each process's iterator files (`process_<i>.json`
    # and the tf.data checkpoint beside it: checkpoints.DataIteratorHandler).
    is_data = any(_is_data_state(n) for n in names)
    if not (is_array or is_data) and "metadata" not in names and "_METADATA" not in names:
      return Damage(step, item, files.join(item_dir, "metadata"), "missing (item metadata)")
    for path in files.walk_files(item_dir):
      size = files.size(path)
      parent, name = path.rsplit("/", 2)[-2:]
      if name in _JSON_FILES or parent == "array_metadatas" or _is_data_state(name):
        if problem := _json_problem(path):
          return Damage(step, item, path, problem)
      elif size == 0 and (is_array or is_data):
        return Damage(step, item, path, "empty file (0 bytes; array data or index lost)")
  return None


def _damage_from_error(directory: str, step: int, error: Exception) -> Damage | None:
  """The Damage an exception raised while reading `step` describes, or None."""
  text = f"{error.__class__.__name__}: {error}"
  cause = error.__cause__ or error.__context__
  while cause is not None and len(text) < 20000:
    text += f"\n{cause.__class__.__name__}: {cause}"
    cause = cause.__cause__ or cause.__context__
  step_dir = files.join(directory, str(step))
  where = [p for p in _PATH_IN_MESSAGE.findall(text) if p.startswith(step_dir + "/")]
  # Damage only when the reader says a file of this step is bad, naming it.
  if not where or not _DAMAGE.search(text) or _MISMATCH.search(text):
    return None
  # The most specific path: a file the message names (TensorStore names the
  # database directory first, then the file it could not read).
  where.sort(key=lambda p: (not files.exists(p) or files.isdir(p), -len(p)))
  file = where[0].rstrip("/") if where else step_dir
  rel = file[len(step_dir) + 1:] if file.startswith(step_dir + "/") else ""
  item = rel.split("/", 1)[0] or None
  # The reader's own words about that file (TensorStore: "... local file
  # "<path>": Requested byte range [0, 429) is not valid ..."), with its code.
  after = text[text.rfind(file) + len(file):].lstrip('"/: ,').splitlines()
  detail = (after[0] if after and after[0].strip() else text.splitlines()[0])
  detail = detail.split(" [tensorstore_spec")[0][:200]
  code = re.search(r"\b(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND)\b", text)
  return Damage(step, item, file, "cannot be read" + (f" ({code.group(1)}: {detail})" if code
                                                      else f" ({detail})"))


def _report(damage: Damage, action: str) -> None:
  msg = f"damaged or incomplete run checkpoint: {damage}; {action}"
  logging.warning(msg)
  print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def _is_main_process() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def _move_aside(ckpt, step: int, tag: str) -> str:
  """Renames `<step>` to `<step>.<tag>-<time>` (process 0 only); returns the new path."""
  src = files.join(ckpt.directory, str(step))
  dst = f"{src}.{tag}-{time.strftime('%Y%m%dT%H%M%S')}"
  n = 1
  while files.exists(dst):
    dst, n = f"{src}.{tag}-{time.strftime('%Y%m%dT%H%M%S')}-{n}", n + 1
  if _is_main_process():
    files.rename(src, dst)
  return dst


def move_newer_aside(ckpt, step: int) -> list[str]:
  """Moves the steps after `step` aside (`<n>.superseded-<time>`), so a run resumed
  from an earlier step can save those steps again. Returns the new paths."""
  moved = []
  for n in step_dirs(ckpt.directory):
    if n > step:
      moved.append(_move_aside(ckpt, n, "superseded"))
      logging.warning("resuming from step %d: newer step %d moved aside to %s", step, n,
                      moved[-1])
  if moved:
    ckpt.manager.reload()
  return moved


def restore_newest(ckpt, read: Callable[[int], Any], step: int | None, move_aside: bool):
  """(step, read(step)) of `step`, or of the newest step that reads (see module doc).

  Raises:
    CheckpointDamaged: the explicit `step` cannot be read.
    FileNotFoundError: no step reads (the damaged ones are named).
  """
  if step is not None:
    damage = check_step(ckpt.directory, step)
    if damage is None:
      try:
        return step, read(step)
      except Exception as e:  # pylint: disable=broad-except
        damage = _damage_from_error(ckpt.directory, step, e)
        if damage is None:
          raise
        raise CheckpointDamaged(f"{damage} (requested with --restore_step; nothing was "
                                "moved)") from e
    raise CheckpointDamaged(f"{damage} (requested with --restore_step; nothing was moved)")
  damaged = []
  for s in sorted(set(step_dirs(ckpt.directory)) | set(ckpt.all_steps()), reverse=True):
    damage = check_step(ckpt.directory, s)
    if damage is None:
      try:
        out = read(s)
      except Exception as e:  # pylint: disable=broad-except
        damage = _damage_from_error(ckpt.directory, s, e)
        if damage is None:
          raise  # Not damage (e.g. a restore target of another shape): never move it.
      else:
        if damaged:
          _report_fallback(ckpt, s, damaged)
        _check_agreement(ckpt, s)
        return s, out
    damaged.append(damage)
    if move_aside:
      _report(damage, f"moved aside to {_move_aside(ckpt, s, 'damaged')}; trying the "
                      "previous step")
      ckpt.manager.reload()
    else:
      _report(damage, "skipped (left in place: only the trainer moves steps aside); trying "
                      "the previous step")
  if damaged:
    raise FileNotFoundError(
        f"no readable checkpoint in {ckpt.directory!r}; damaged: "
        + "; ".join(map(str, damaged)) + (". They were moved aside: a new run starts from "
                                          "step 0" if move_aside else ""))
  raise FileNotFoundError(f"no complete checkpoint in {ckpt.directory!r}")


def _report_fallback(ckpt, step: int, damaged: list[Damage]) -> None:
  msg = (f"restored step {step} of {ckpt.directory} instead of the newer damaged step(s) "
         f"{', '.join(str(d.step) for d in damaged)}")
  logging.warning(msg)
  print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def _check_agreement(ckpt, step: int) -> None:
  """All processes must have restored the same step (damage seen by some only)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  steps = np.asarray(multihost_utils.process_allgather(np.int64(step))).ravel()
  if len(set(steps.tolist())) > 1:
    raise CheckpointDamaged(f"processes restored different steps of {ckpt.directory}: "
                            f"{steps.tolist()}; a step is damaged for some processes only. "
                            f"Rerun with --restore_step={int(steps.min())}")


def heals(move_aside: bool) -> Callable:
  """Decorates a restore method `m(self, ..., step=None)` of `RunCheckpointer`.

  The decorated method takes `step` as before (None: the newest readable
  step) and, when `move_aside`, `set_aside_newer=True` (trainer resuming
  from an explicit earlier step: see `set_aside_newer`).
  """
  def deco(method):
    sig = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, set_aside_newer: bool = False, **kwargs):
      bound = sig.bind(self, *args, **kwargs)
      bound.apply_defaults()
      requested = bound.arguments.pop("step")
      rest = dict(bound.arguments)
      rest.pop("self")

      def read(s):
        return method(self, step=s, **rest)

      step, out = restore_newest(self, read, requested, move_aside)
      if set_aside_newer and move_aside and requested is not None:
        move_newer_aside(self, step)
      return out
    return wrapper
  return deco
