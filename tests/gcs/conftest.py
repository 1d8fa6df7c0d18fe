"""A real GCS-API server on 127.0.0.1 for the bucket tests, started and stopped here.

The server is `gcp-storage-emulator` (in memory) in its own process, on a
free port, started through emulator_main.py, which makes it answer object
generations and generation preconditions as GCS does (TensorStore needs
both). The clients are pointed at it through the environment, restored
afterwards:
  STORAGE_EMULATOR_HOST     gcsfs (the path layer, `mode_jax.files`)
  TENSORSTORE_GCS_HTTP_URL  TensorStore (Orbax's arrays), with
                            TENSORSTORE_GCS_REQUEST_CONCURRENCY=4 (see emulator_main.py)
  FSSPEC_GCS_TOKEN=anon     gcsfs: no credential lookup (no metadata server)
plus the settings that keep every client on the loopback address.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = "mode-jax-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
  end = time.time() + timeout
  while time.time() < end:
    if proc.poll() is not None:
      proc.log.seek(0)
      raise RuntimeError(f"GCS emulator exited with {proc.returncode}: "
                         f"{proc.log.read().decode(errors='replace')[-2000:]}")
    try:
      with urllib.request.urlopen(url, timeout=1):
        return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f"GCS emulator did not answer {url} in {timeout}s")


def emulator_env(url: str) -> dict:
  """The environment that points every client of the stack at `url`."""
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      # The emulator answers one request at a time: a burst of 32 only times out.
      "TENSORSTORE_GCS_REQUEST_CONCURRENCY": "4",
      "FSSPEC_GCS_TOKEN": "anon",
      "GOOGLE_CLOUD_PROJECT": "test",
      "EPATH_USE_TF": "false",
      "NO_GCE_CHECK": "True",
      "GCE_METADATA_HOST": "127.0.0.1:1",
      "GCE_METADATA_IP": "127.0.0.1:1",
      "GCE_METADATA_ROOT": "127.0.0.1:1",
  }


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A fresh in-memory GCS server with bucket BUCKET; yields {"url", "bucket", "root"}."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w+b")  # never a full pipe
  proc = subprocess.Popen(
      [sys.executable, os.path.join(os.path.dirname(__file__), "emulator_main.py"), "start",
       "--host=127.0.0.1",
       f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}", "--quiet"],
      stdout=log, stderr=subprocess.STDOUT)
  proc.log = log
  saved = {}
  try:
    _wait(f"{url}/storage/v1/b", proc)
    for k, v in emulator_env(url).items():
      saved[k] = os.environ.get(k)
      os.environ[k] = v
    _reset_clients()
    yield {"url": url, "bucket": BUCKET, "root": f"gs://{BUCKET}"}
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    _reset_clients()
    proc.terminate()
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.close()


def _reset_clients() -> None:
  """Drops cached gcsfs instances, so the next one reads the environment again."""
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  try:
    import gcsfs  # pylint: disable=g-import-not-at-top
    gcsfs.GCSFileSystem.clear_instance_cache()
  except ImportError:
    pass

