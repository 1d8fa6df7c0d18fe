"""What one host pays to prepare its SNI data when SNI_DIR is a bucket.

Run (starts its own GCS emulator on 127.0.0.1; the bucket is in memory):

    python benchmarks/sni_bucket.py [--sni_dir data/sni_sample] [--hosts 4] [--select_only]

First it counts the requests the bucket server answers while
`sni.select_tasks` picks the train split's tasks (the split file names 756
tasks; the sample holds 20 of them). `--select_only` stops there.
Then, for every train task of the sample, cold (fresh cache directories), it
measures on one process:
  1. reading the task files from the bucket (the JSON only);
  2. preparing the whole task (parse, prompts, tokenize, TFRecord), as one
     host of one does;
  3. preparing shard 0 of `--hosts`, as each host of a `--hosts`-host slice
     does (tokenizes only its own examples);
  4. with the cache in the bucket: a restarted host (fresh local disk)
     downloading its prepared shard instead of tokenizing again.
Prints one Markdown table row per measurement.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _emulator(log):
  """The emulator on a free port; it logs one line per request it answers into `log`."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  main_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                         "gcs", "emulator_main.py")  # the emulator, answering as GCS does
  proc = subprocess.Popen([sys.executable, main_py, "start",
                           "--host=127.0.0.1", f"--port={port}", "--in-memory",
                           "--default-bucket=bench"],
                          stdout=log, stderr=subprocess.STDOUT)
  for _ in range(300):
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
      break
    except OSError:
      time.sleep(0.1)
  os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                    FSSPEC_GCS_TOKEN="anon")
  return proc


def _requests(log) -> int:
  """Requests the emulator has answered so far (its access-log lines)."""
  with open(log.name, "rb") as f:
    return len(re.findall(rb'^"(?:GET|POST|PUT|DELETE|PATCH) ', f.read(), re.M))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sni_dir", default="data/sni_sample")
  ap.add_argument("--hosts", type=int, default=4)
  ap.add_argument("--select_only", action="store_true")
  args = ap.parse_args()
  log = tempfile.NamedTemporaryFile(suffix=".log")  # pylint: disable=consider-using-with
  proc = _emulator(log)
  try:
    from mode_jax import files  # pylint: disable=g-import-not-at-top
    from mode_jax.data import config  # pylint: disable=g-import-not-at-top
    from mode_jax.data import prepare  # pylint: disable=g-import-not-at-top
    from mode_jax.data import records  # pylint: disable=g-import-not-at-top
    from mode_jax.data import sni  # pylint: disable=g-import-not-at-top
    from mode_jax.data import vocab  # pylint: disable=g-import-not-at-top
    remote = "gs://bench/sni"
    for local in files.walk_files(args.sni_dir):
      files.copy(local, files.join(remote, os.path.relpath(local, args.sni_dir)))
    before, t = _requests(log), time.perf_counter()
    names = sni.list_tasks(remote, allow_missing=True)
    sec = time.perf_counter() - t
    time.sleep(0.5)  # the last access-log lines
    print(f"select_tasks (train split, {len(names)} of the split's tasks present): "
          f"{_requests(log) - before} bucket requests, {sec:.2f} s")
    if args.select_only:
      return
    cfg = config.SniConfig(max_input_tokens=896)
    v = vocab.get_vocabulary(vocab.default_path(1024))
    v.encode("warm up")
    rows = []

    def timed(label, fn):
      t = time.perf_counter()
      fn()
      rows.append((label, time.perf_counter() - t))

    timed(f"read {len(names)} task files from the bucket",
          lambda: [records.read_task(sni.task_path(remote, n)) for n in names])
    for label, shard, cache in (
        ("prepare every example (1 host)", (0, 1), None),
        (f"prepare shard 0 of {args.hosts} (each of {args.hosts} hosts)", (0, args.hosts), None),
        (f"prepare shard 0 of {args.hosts}, cache in the bucket (upload)", (0, args.hosts),
         "gs://bench/cache"),
        (f"restarted host: download shard 0 of {args.hosts} from the bucket cache",
         (0, args.hosts), "gs://bench/cache")):
      tmp = tempfile.mkdtemp()
      prepare.DEFAULT_CACHE_DIR = os.path.join(tmp, "local")  # a fresh local disk
      stores = [prepare.TaskStore(sni.task_path(remote, n), cfg, "", cache or tmp)
                for n in names]
      timed(label, lambda: [s.ensure("train", v, shard) for s in stores])  # noqa: B023
      shutil.rmtree(tmp)
    n_ex = sum(prepare.TaskStore(sni.task_path(remote, n), cfg, "", tempfile.mkdtemp())
               .counts()["train"] for n in names)
    print(f"{len(names)} train tasks, {n_ex} train examples (+ validation and test)")
    print("| step | seconds |\n|---|---|")
    for label, sec in rows:
      print(f"| {label} | {sec:.2f} |")
  finally:
    proc.terminate()
    proc.wait()
    log.close()


if __name__ == "__main__":
  main()
