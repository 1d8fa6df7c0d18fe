"""Run-directory file access that works on local disks and buckets (gs://).

Orbax already reads and writes bucket paths; the small JSON and text files
of a run (operative config, metrics, summaries, manifests) go through here,
on `etils.epath`, so MODEL_DIR may be `gs://...` on a TPU VM.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath


def is_remote(path: str) -> bool:
  return "://" in str(path)


def absolute(path: str) -> str:
  """An absolute local path, or the bucket path unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def join(*parts: str) -> str:
  return str(epath.Path(parts[0]).joinpath(*parts[1:]))


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def write_text(path: str, text: str) -> None:
  """Writes `text` atomically where the file system allows (local: rename)."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):  # object stores replace whole objects anyway
    p.write_text(text)
    return
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, p)


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(obj, indent=2, default=str))


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def append_line(path: str, line: str) -> None:
  """Appends one line (buckets cannot append: the object is rewritten)."""
  p = epath.Path(path)
  if not is_remote(path):
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
      f.write(line + "\n")
    return
  old = p.read_text() if p.exists() else ""
  write_text(path, old + line + "\n")


def is_dir(path: str) -> bool:
  return epath.Path(path).is_dir()


def remove(path: str) -> None:
  """Removes one file; a file already gone is fine."""
  epath.Path(path).unlink(missing_ok=True)


def rename(src: str, dst: str) -> None:
  """Renames a file or directory (atomic on local disks; raises if `src` is gone)."""
  epath.Path(src).rename(dst)


def listdir(path: str) -> list[str]:
  """Names in a directory (empty when it does not exist)."""
  p = epath.Path(path)
  return sorted(c.name for c in p.iterdir()) if p.exists() else []


def create_exclusive(path: str, text: str) -> bool:
  """Creates `path` holding `text` unless it exists; returns whether it did.

  Local disks: atomic (hard link of a complete temporary file, so no reader
  ever sees an empty file). Buckets have no exclusive create through epath:
  check then write, so callers read the file back to confirm.
  """
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    if p.exists():
      return False
    p.write_text(text)
    return True
  tmp = p.parent / f"{p.name}.tmp-{os.getpid()}"
  tmp.write_text(text)
  try:
    os.link(tmp, p)
  except FileExistsError:
    return False
  finally:
    tmp.unlink(missing_ok=True)
  return True


def check_writable_dir(path: str, what: str = "MODEL_DIR") -> None:
  """Creates directory `path` if needed and proves it writable with a probe file.

  Raises:
    NotADirectoryError: `path` (or a parent) is a file.
    PermissionError: the directory cannot be created or written (read-only,
      no permission), with the operating system's reason.
  """
  p = epath.Path(path)
  if p.exists() and not p.is_dir():
    raise NotADirectoryError(f"{what} {path!r} is a file, not a directory")
  probe = p / f".write-probe-{os.getpid()}"
  try:
    p.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except (NotADirectoryError, FileExistsError) as e:
    raise NotADirectoryError(f"{what} {path!r}: a parent is a file, not a directory") from e
  except OSError as e:
    reason = e.strerror or str(e)
    raise PermissionError(f"{what} {path!r} is not writable: {reason}") from e


def walk_files(path: str):
  """Yields (file path, size in bytes) of every file under directory `path`."""
  stack = [epath.Path(path)]
  while stack:
    for p in stack.pop().iterdir():
      if p.is_dir():
        stack.append(p)
      else:
        yield str(p), p.stat().length
