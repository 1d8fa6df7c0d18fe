"""One writer per run directory: the run lock, with real trainer processes."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mode_jax import runlock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def _trainer(model_dir, cache_dir, steps=100000):
  return [sys.executable, "-m", "mode_jax.train",
          "--gin_file=experiments/quickstart_tiny.gin",
          f"--gin_bindings=MODEL_DIR='{model_dir}'", f"--gin_bindings=TRAIN_STEPS={steps}",
          f"--gin_bindings=train.cache_dir='{cache_dir}'"]


def _wait_for(path, proc, seconds=180):
  end = time.time() + seconds
  while time.time() < end:
    if os.path.exists(path):
      return
    if proc.poll() is not None:
      out = proc.stdout.read() if proc.stdout else ""
      pytest.fail(f"trainer ended (rc {proc.returncode}) before taking the lock: {out[-3000:]}")
    time.sleep(0.2)
  pytest.fail(f"no lock file {path} after {seconds} s")


@pytest.mark.slow
def test_second_trainer_stops_naming_the_holder_then_dead_holder_is_taken_over(
    tmp_path, caplog):
  model_dir, cache = tmp_path / "run", tmp_path / "cache"
  lock_path = model_dir / runlock.LOCK_NAME
  first = subprocess.Popen(_trainer(model_dir, cache), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  try:
    _wait_for(lock_path, first)
    held = json.loads(lock_path.read_text())
    assert held["pid"] == first.pid and held["host"] == socket.gethostname()
    second = subprocess.run(_trainer(model_dir, cache), cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=300)
    text = second.stdout + second.stderr
    assert second.returncode != 0
    assert "in use by another trainer" in text and f"pid {first.pid}" in text, text[-3000:]
    assert "RunLockHeld" in text
    assert json.loads(lock_path.read_text())["token"] == held["token"]  # Untouched.
  finally:
    first.send_signal(signal.SIGKILL)  # A crash: the lock file stays behind.
    first.wait()
  assert lock_path.exists()
  with caplog.at_level(logging.WARNING):
    lock = runlock.try_acquire(str(model_dir))
  try:
    assert "its process is gone" in caplog.text and f"pid {first.pid}" in caplog.text
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    assert any(n.startswith(runlock.LOCK_NAME + ".stale-") for n in os.listdir(model_dir))
  finally:
    lock.release()
  assert not lock_path.exists()


def _write_lock(model_dir, host, age_s, pid=1):
  now = time.time()
  info = {"host": host, "pid": pid, "pid_start": None, "token": "other", "started": now - age_s,
          "refreshed": now - age_s}
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, runlock.LOCK_NAME), "w") as f:
    json.dump(info, f)


def test_live_lock_of_another_host_holds(tmp_path):
  _write_lock(tmp_path, "tpu-vm-7", age_s=5)
  with pytest.raises(runlock.RunLockHeld, match=r"host 'tpu-vm-7', pid 1"):
    runlock.try_acquire(str(tmp_path))


def test_lock_not_refreshed_for_long_is_taken_over(tmp_path, caplog):
  _write_lock(tmp_path, "tpu-vm-7", age_s=3600)
  with caplog.at_level(logging.WARNING):
    lock = runlock.try_acquire(str(tmp_path), stale_s=600)
  assert "not refreshed for 3600 s" in caplog.text and "tpu-vm-7" in caplog.text
  lock.release()


def test_lock_refreshes_while_held_and_release_removes_it(tmp_path):
  lock = runlock.try_acquire(str(tmp_path), refresh_s=0.05)
  first = json.loads((tmp_path / runlock.LOCK_NAME).read_text())["refreshed"]
  time.sleep(0.5)
  assert json.loads((tmp_path / runlock.LOCK_NAME).read_text())["refreshed"] > first
  lock.check()
  lock.release()
  assert not (tmp_path / runlock.LOCK_NAME).exists()


def test_a_lock_taken_over_meanwhile_is_reported_lost(tmp_path):
  lock = runlock.try_acquire(str(tmp_path), refresh_s=0.05)
  _write_lock(tmp_path, "tpu-vm-7", age_s=0)  # Someone judged it stale and took it.
  time.sleep(0.5)
  with pytest.raises(runlock.RunLockLost, match="taken over by host 'tpu-vm-7'"):
    lock.check()
  lock.release()
  assert (tmp_path / runlock.LOCK_NAME).exists()  # Not ours any more: left alone.


def test_lock_left_by_this_process_is_taken_over(tmp_path, caplog):
  runlock.try_acquire(str(tmp_path), refresh_s=3600)  # Never released: a run that raised.
  with caplog.at_level(logging.WARNING):
    lock = runlock.try_acquire(str(tmp_path))
  assert "earlier run in this process" in caplog.text
  lock.release()


_TWO_PROCESS_SCRIPT = """
import os, sys
pid, port, d = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid)
from jax.experimental import multihost_utils
from mode_jax import runlock
try:
  runlock.acquire(d)
  print("ROUND1 HELD", flush=True)
except runlock.RunLockHeld as e:
  print(f"ROUND1 REFUSED {e}", flush=True)
multihost_utils.sync_global_devices("round1")
if pid == 0:
  os.remove(os.path.join(d, runlock.LOCK_NAME))
multihost_utils.sync_global_devices("round2")
lock = runlock.acquire(d)
print(f"ROUND2 {'held' if lock.held else 'placeholder'}", flush=True)
multihost_utils.sync_global_devices("round3")
lock.release()
"""


@pytest.mark.slow
def test_two_process_run_process_0_holds_and_both_stop_when_held(tmp_path):
  """Real jax.distributed processes on 127.0.0.1: process 0 holds, everyone agrees."""
  _write_lock(tmp_path, "tpu-vm-7", age_s=0)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  script = tmp_path / "two.py"
  script.write_text(_TWO_PROCESS_SCRIPT)
  procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(tmp_path)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  done = [p.communicate(timeout=300) for p in procs]
  outs = [out for out, _ in done]
  assert all(p.returncode == 0 for p in procs), done
  assert "ROUND1 REFUSED MODEL_DIR" in outs[0] and "host 'tpu-vm-7'" in outs[0]
  assert "ROUND1 REFUSED" in outs[1] and "process 0" in outs[1]
  assert "ROUND2 held" in outs[0] and "ROUND2 placeholder" in outs[1]
  assert not (tmp_path / runlock.LOCK_NAME).exists()
