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
