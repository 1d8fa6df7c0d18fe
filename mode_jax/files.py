"""The one path layer of mode_jax: local disks and buckets (gs://) alike.

Every user path (MODEL_DIR, BASE_CHECKPOINT, VOCAB_PATH, SNI_DIR, the SNI
cache, sweep roots) goes through here, on `etils.epath`, never through
`os.path` or `glob`. Bucket paths use epath's fsspec backend (gcsfs), the
client that honours `STORAGE_EMULATOR_HOST`, so a GCS emulator on 127.0.0.1
stands in for a bucket in the tests (see `configure`). Orbax reads and writes
checkpoint arrays itself, through TensorStore (`TENSORSTORE_GCS_HTTP_URL`).

Buckets cannot append to an object: `LineWriter` buffers lines and writes
numbered part objects, each once; `read_lines` reads either form back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any

from etils import epath

# Where copies of bucket files that need a local file (the SentencePiece
# model for seqio) are kept, named by content hash.
LOCAL_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "mode_jax", "files")
_PART = re.compile(r"\.(\d{5})$")


def is_remote(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def configure() -> None:
  """Makes epath use fsspec (gcsfs) rather than `tf.io.gfile` for gs:// paths.

  epath picks `tf.io.gfile` whenever TensorFlow is importable, unless
  `EPATH_USE_TF` is false (etils/epath/gpath.py, read at each path
  operation, so Orbax's own epath calls follow it too). TensorFlow's GCS
  client ignores STORAGE_EMULATOR_HOST, so the tests' emulator would be
  bypassed; gcsfs honours it and reaches the real service on a TPU VM with
  the VM's credentials. An explicit EPATH_USE_TF in the environment wins.
  gcsfs itself, by default, first asks the gRPC storage-control API whether
  a bucket is zonal (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT, read when gcsfs is
  imported), which an emulator does not answer and which slows every first
  access; mode_jax turns it off unless the environment says otherwise.
  Subprocesses inherit the settings. Idempotent; called on import.
  """
  os.environ.setdefault("EPATH_USE_TF", "false")
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def path(p: str | os.PathLike) -> epath.Path:
  return epath.Path(p)


def absolute(p: str | os.PathLike) -> str:
  """An absolute local path, or the bucket path unchanged."""
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(p)


def join(*parts: str | os.PathLike) -> str:
  return str(epath.Path(parts[0]).joinpath(*[os.fspath(q) for q in parts[1:]]))


def basename(p: str | os.PathLike) -> str:
  return epath.Path(p).name


def parent(p: str | os.PathLike) -> str:
  return str(epath.Path(p).parent)


def exists(p: str | os.PathLike) -> bool:
  return epath.Path(p).exists()


def isdir(p: str | os.PathLike) -> bool:
  return epath.Path(p).is_dir()


def isfile(p: str | os.PathLike) -> bool:
  return epath.Path(p).is_file()


def listdir(p: str | os.PathLike) -> list[str]:
  """Sorted names of the entries of directory `p` (empty when it does not exist)."""
  q = epath.Path(p)
  return sorted(c.name for c in q.iterdir()) if q.exists() else []


def glob(root: str | os.PathLike, pattern: str) -> list[str]:
  """Sorted paths under `root` matching `pattern`; `**/` is zero or more directories.

  epath refuses `**` on buckets (one request per directory); here a
  recursive pattern is one walk of `root`, its relative paths matched.
  """
  if "**" not in pattern:
    return sorted(str(q) for q in epath.Path(root).glob(pattern))
  rx = _glob_regex(pattern)
  base = str(epath.Path(root)).rstrip("/") + "/"
  return [f for f in walk_files(root) if rx.match(f[len(base):])]


def _glob_regex(pattern: str) -> re.Pattern:
  parts = pattern.split("/")
  rx = ""
  for i, part in enumerate(parts):
    last = i == len(parts) - 1
    if part == "**":
      rx += ".*" if last else "(?:[^/]+/)*"
      continue
    rx += "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
    rx += "" if last else "/"
  return re.compile(rx + r"\Z")


def makedirs(p: str | os.PathLike) -> None:
  epath.Path(p).mkdir(parents=True, exist_ok=True)


def read_text(p: str | os.PathLike) -> str:
  return epath.Path(p).read_text()


def read_bytes(p: str | os.PathLike) -> bytes:
  return epath.Path(p).read_bytes()


def read_json(p: str | os.PathLike, default: Any = None) -> Any:
  """The parsed JSON file, or `default` when it does not exist."""
  if not exists(p):
    return default
  return json.loads(read_text(p))


def open_file(p: str | os.PathLike, mode: str = "rb"):
  """A file object (seekable when read), local or in a bucket."""
  return epath.Path(p).open(mode)


def size(p: str | os.PathLike) -> int:
  return int(epath.Path(p).stat().length)


def stat_key(p: str | os.PathLike) -> dict:
  """{"size", "mtime"} of a file: what a cache key needs to see a change."""
  st = epath.Path(p).stat()
  return {"size": int(st.length), "mtime": float(st.mtime)}


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
  """Writes `data` atomically where the file system allows (local: rename).

  An object store replaces whole objects anyway; concurrent writers of the
  same local file each write their own temporary file.
  """
  q = epath.Path(p)
  if is_remote(p):
    q.write_bytes(data)
    return
  q.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=q.parent, prefix=f".{q.name}.tmp-")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, q)


def write_text(p: str | os.PathLike, text: str) -> None:
  write_bytes(p, text.encode())


def write_json(p: str | os.PathLike, obj: Any) -> None:
  write_text(p, json.dumps(obj, indent=2, default=str))


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Copies one file between any two places (local or bucket), streamed."""
  if not is_remote(dst):
    epath.Path(dst).parent.mkdir(parents=True, exist_ok=True)
  with open_file(src, "rb") as fin, open_file(dst, "wb") as fout:
    shutil.copyfileobj(fin, fout, 1 << 22)


def local_copy(p: str | os.PathLike, suffix: str = "", cache_dir: str | None = None) -> str:
  """A local file with the content of `p`: `p` itself if local, else a cached copy.

  The copy is named by the SHA-256 of the content, so a changed object gives
  a new file and concurrent processes write the same bytes.
  """
  p = os.fspath(p)
  if not is_remote(p):
    return p
  data = read_bytes(p)
  digest = hashlib.sha256(data).hexdigest()[:24]
  out = os.path.join(cache_dir or LOCAL_CACHE, digest + suffix)
  if not os.path.exists(out):
    write_bytes(out, data)
  return out


def append_line(p: str | os.PathLike, line: str) -> None:
  """Appends one line to a local file (use `LineWriter` for bucket paths)."""
  if is_remote(p):
    raise ValueError(f"cannot append to the bucket object {os.fspath(p)!r}: objects are "
                     "immutable; use files.LineWriter, which writes part objects")
  q = epath.Path(p)
  q.parent.mkdir(parents=True, exist_ok=True)
  with open(q, "a") as f:
    f.write(line + "\n")


def part_paths(p: str | os.PathLike) -> list[str]:
  """The part objects `<p>.00000`, `<p>.00001`, ... of a `LineWriter`, in order."""
  q = epath.Path(p)
  if not q.parent.exists():
    return []
  parts = [c for c in q.parent.glob(q.name + ".*") if _PART.search(c.name)]
  return [str(c) for c in sorted(parts, key=lambda c: int(_PART.search(c.name).group(1)))]


def read_lines(p: str | os.PathLike) -> list[str]:
  """The lines of a `LineWriter` file: the file itself, then its part objects."""
  out = []
  for q in ([os.fspath(p)] if exists(p) else []) + part_paths(p):
    out += read_text(q).splitlines()
  return out


class LineWriter:
  """Appends lines to a local file, or to a bucket path as part objects.

  Locally each line is appended and flushed at once. A bucket object cannot
  be appended to, and rewriting it at every line costs a whole upload each
  time, so lines are buffered and written as `<path>.00000`, `<path>.00001`,
  ... when `flush()` is called, when `flush_every_s` has passed since the
  last part, and on `close()`. Each part is written once; a restarted writer
  continues the numbering. Lines still buffered at a kill are lost (a resumed
  run logs those steps again).
  """

  def __init__(self, p: str | os.PathLike, flush_every_s: float = 60.0):
    self.path = os.fspath(p)
    self.remote = is_remote(self.path)
    self.flush_every_s = flush_every_s
    self._buffer: list[str] = []
    self._last = time.time()
    self._next = None

  def write(self, line: str) -> None:
    if not self.remote:
      append_line(self.path, line)
      return
    self._buffer.append(line)
    if time.time() - self._last >= self.flush_every_s:
      self.flush()

  def flush(self) -> None:
    """Writes the buffered lines as the next part object (nothing if none)."""
    self._last = time.time()
    if not self._buffer:
      return
    if self._next is None:
      parts = part_paths(self.path)
      self._next = int(_PART.search(parts[-1]).group(1)) + 1 if parts else 0
    write_text(f"{self.path}.{self._next:05d}", "".join(s + "\n" for s in self._buffer))
    self._next += 1
    self._buffer = []

  def close(self) -> None:
    self.flush()


def walk_files(root: str | os.PathLike) -> list[str]:
  """Every file under `root`, recursively (sorted paths); [] if `root` is absent."""
  root = os.fspath(root)
  if not is_remote(root):
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)
  # One recursive listing (a prefix query on GCS); epath's walk drops the scheme.
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  scheme = root.split("://", 1)[0] + "://"
  fs = backend.fsspec_backend.fs(root)
  return sorted(scheme + f for f in fs.find(root))




def remove(path: str) -> None:
  """Removes one file; a file already gone is fine."""
  epath.Path(path).unlink(missing_ok=True)


def rename(src: str, dst: str) -> None:
  """Renames a file or directory (atomic on local disks; raises if `src` is gone)."""
  epath.Path(src).rename(dst)


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


configure()
