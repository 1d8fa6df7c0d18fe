"""One writer per run directory: the trainer's lock file in MODEL_DIR.

`<MODEL_DIR>/RUN_LOCK.json` holds the holder's host, pid, process start
time, a random token and two times (started, refreshed). The trainer takes
it at start-up, before any heavy work (in a multi-process run process 0
takes it and tells the others), refreshes it from a daemon thread while it
runs, and removes it when it ends (also on an exception, at interpreter
exit). A second trainer on the same directory stops with `RunLockHeld`,
naming the holder. Evaluation, inference and export never take the lock:
they may read a directory a trainer holds.

A lock is *stale*, and is taken over with a warning, when
- its holder ran on this host and that process is gone (pid not alive, or
  alive but started at another time: a reused pid), or it is this very
  process (an earlier run here that ended in an exception), or
- it was not refreshed for `stale_s` seconds (a holder on another host that
  died without cleaning up).

Creation is atomic on local disks. Buckets offer no exclusive create through
`etils.epath`: the lock is written, then read back to confirm the token.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid

from mode_jax import files

LOCK_NAME = "RUN_LOCK.json"
REFRESH_S = 60.0
STALE_S = 600.0


class RunLockHeld(RuntimeError):
  """Another live trainer holds the run directory."""


class RunLockLost(RuntimeError):
  """This trainer's lock was taken over (it was judged stale) while it ran."""


def _proc_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (Linux), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  now = _proc_start(pid)
  return start is None or now is None or now == start


def describe(info: dict) -> str:
  """'host H, pid P, started T, last refreshed S s ago' of a lock's holder."""
  age = time.time() - float(info.get("refreshed", 0))
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
  return (f"host {info.get('host')!r}, pid {info.get('pid')}, started {started}, last "
          f"refreshed {age:.0f} s ago")


def stale_reason(info: dict | None, stale_s: float = STALE_S) -> str | None:
  """Why the lock described by `info` is stale, or None when its holder is live."""
  if info is None:
    return "the lock file is unreadable"
  age = time.time() - float(info.get("refreshed", 0))
  if info.get("host") == socket.gethostname():
    if info.get("pid") == os.getpid() and info.get("pid_start") == _proc_start(os.getpid()):
      return "it was left by an earlier run in this process"
    if not _alive(int(info.get("pid", -1)), info.get("pid_start")):
      return "its process is gone"
  if age > stale_s:
    return f"it was not refreshed for {age:.0f} s (limit {stale_s:.0f} s)"
  return None


def read(model_dir: str) -> dict | None:
  """The lock's holder info, or None when there is no lock or it is unreadable."""
  path = files.join(model_dir, LOCK_NAME)
  try:
    info = json.loads(files.read_text(path))
  except (FileNotFoundError, ValueError):
    return None
  return info if isinstance(info, dict) else None


class RunLock:
  """A held (or, on processes other than 0, a placeholder) run-directory lock."""

  def __init__(self, model_dir: str, info: dict | None, refresh_s: float = REFRESH_S):
    self.model_dir = model_dir
    self.path = files.join(model_dir, LOCK_NAME)
    self.info = info
    self.lost: str | None = None
    self._stop = threading.Event()
    self._thread = None
    if info is not None:
      self._thread = threading.Thread(target=self._refresh, args=(refresh_s,), daemon=True,
                                      name=f"runlock:{model_dir}")
      self._thread.start()
      atexit.register(self.release)

  @property
  def held(self) -> bool:
    return self.info is not None and not self._stop.is_set()

  def _refresh(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        cur = read(self.model_dir)
        if cur is None or cur.get("token") != self.info["token"]:
          self.lost = ("the lock file is gone" if cur is None
                       else f"it was taken over by {describe(cur)}")
          logging.error("run lock %s lost: %s", self.path, self.lost)
          return
        self.info = dict(self.info, refreshed=time.time())
        files.write_json(self.path, self.info)
      except OSError as e:  # A flaky bucket: try again at the next beat.
        logging.warning("could not refresh run lock %s: %s", self.path, e)

  def check(self) -> None:
    """Raises `RunLockLost` when another trainer took the directory over."""
    if self.lost:
      raise RunLockLost(f"run lock {self.path} lost ({self.lost}); this trainer stops so "
                        "that one writer remains")

  def release(self) -> None:
    """Stops refreshing and removes the lock file if it is still this one."""
    if self.info is None or self._stop.is_set():
      return
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=10)
    cur = read(self.model_dir)
    if cur is not None and cur.get("token") == self.info["token"]:
      files.remove(self.path)


def try_acquire(model_dir: str, *, refresh_s: float = REFRESH_S,
                stale_s: float = STALE_S) -> RunLock:
  """Takes the lock of `model_dir` in this process (see `acquire` for several).

  Raises:
    RunLockHeld: a live trainer holds it (the message names host and pid).
  """
  path = files.join(model_dir, LOCK_NAME)
  now = time.time()
  info = {"host": socket.gethostname(), "pid": os.getpid(),
          "pid_start": _proc_start(os.getpid()), "token": uuid.uuid4().hex,
          "started": now, "refreshed": now}
  for _ in range(5):
    if files.create_exclusive(path, json.dumps(info, indent=2)):
      cur = read(model_dir)
      if cur is not None and cur.get("token") == info["token"]:
        return RunLock(model_dir, info, refresh_s)
      continue  # A bucket race: another trainer wrote after our check.
    cur = read(model_dir)
    if cur is None and not files.exists(path):
      continue  # Released between our attempt and the read.
    reason = stale_reason(cur, stale_s)
    if reason is None:
      raise RunLockHeld(
          f"MODEL_DIR {model_dir!r} is in use by another trainer ({describe(cur)}); one "
          f"writer per run directory. Stop that trainer, or use another MODEL_DIR; if it "
          f"is dead, remove {path} (eval and infer may read the directory meanwhile)")
    moved = f"{path}.stale-{info['token'][:8]}"
    try:
      files.rename(path, moved)  # Only one of several takers wins the rename.
    except (FileNotFoundError, OSError):
      continue
    logging.warning("taking over the run lock %s: %s (held by %s; kept as %s)", path, reason,
                    describe(cur) if cur else "unknown", moved)
  raise RunLockHeld(f"could not take the run lock {path}: other trainers keep taking it")


def acquire(model_dir: str, *, refresh_s: float = REFRESH_S,
            stale_s: float = STALE_S) -> RunLock:
  """Process 0 takes the lock; every process learns whether it got it.

  Returns:
    The `RunLock` (a placeholder that holds nothing on processes > 0).

  Raises:
    RunLockHeld: on every process, when process 0 could not take the lock.
  """
  import jax  # pylint: disable=g-import-not-at-top
  error, lock = None, None
  if jax.process_index() == 0:
    try:
      lock = try_acquire(model_dir, refresh_s=refresh_s, stale_s=stale_s)
    except RunLockHeld as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not int(ok) and error is None:
      error = RunLockHeld(f"MODEL_DIR {model_dir!r} is in use by another trainer (see "
                          "process 0's message)")
  if error is not None:
    raise error
  return lock or RunLock(model_dir, None)
