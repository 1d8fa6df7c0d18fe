"""Where metrics go: the console, TensorBoard event files and a JSONL file.

In a bucket (MODEL_DIR=gs://...) nothing is rewritten at each log step:
objects cannot be appended to, so the JSONL lines are buffered and written
as numbered part objects (`files.LineWriter`), and TensorBoard events go to
a local file that is uploaded as one new object per flush
(`RemoteSummaryWriter`). Both flush every `flush_every_s` seconds, on
`flush()` and on `close()`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Mapping

import jax
import numpy as np

from mode_jax import files

# clu.metric_writers imports TensorFlow (6 s of a cold start): imported where
# a writer is made, so an entry point's --help or a configuration error at
# start-up answers without it.


def _scalar(v):
  v = np.asarray(v)
  return float(v) if v.size == 1 else None


class RemoteSummaryWriter:
  """TensorBoard scalars for a bucket log dir, each events file uploaded once.

  A clu `MetricWriter` by its methods (the base class is not imported here,
  see above).

  TensorFlow's own GCS writer uploads the whole events file again at every
  flush, and it does not honour STORAGE_EMULATOR_HOST. Here events go to a
  local file; `flush()` closes it, uploads it through `mode_jax.files` into
  `logdir` and starts a new file (a new name: TensorBoard reads every events
  file of a directory).
  """

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._local = tempfile.mkdtemp(prefix="mode_jax_tb-")
    self._writer = None

  def write_scalars(self, step, scalars):
    if self._writer is None:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._writer = metric_writers.SummaryWriter(self._local)
    self._writer.write_scalars(step, scalars)

  def write_summaries(self, step, values, metadata=None):
    raise NotImplementedError("RemoteSummaryWriter writes scalars only")

  def write_images(self, step, images):
    raise NotImplementedError("RemoteSummaryWriter writes scalars only")

  def write_videos(self, step, videos):
    raise NotImplementedError("RemoteSummaryWriter writes scalars only")

  def write_audios(self, step, audios, *, sample_rate):
    raise NotImplementedError("RemoteSummaryWriter writes scalars only")

  def write_texts(self, step, texts):
    raise NotImplementedError("RemoteSummaryWriter writes scalars only")

  def write_histograms(self, step, arrays, num_buckets=None):
    raise NotImplementedError("RemoteSummaryWriter writes scalars only")

  def write_hparams(self, hparams):
    raise NotImplementedError("RemoteSummaryWriter writes scalars only")

  def flush(self):
    if self._writer is None:
      return
    self._writer.close()
    self._writer = None
    for name in sorted(os.listdir(self._local)):
      local, dest, n = os.path.join(self._local, name), files.join(self.logdir, name), 0
      while files.exists(dest):  # never overwrite an uploaded file (same-second names)
        n += 1
        dest = files.join(self.logdir, f"{name}.{n}")
      files.copy(local, dest)
      os.remove(local)

  def close(self):
    self.flush()
    shutil.rmtree(self._local, ignore_errors=True)


class MetricsLogger:
  """Writes scalars to `<model_dir>/<name>` (TensorBoard) and `<name>.jsonl`.

  Only process 0 writes files; every process may print. A local run dir is
  written at every step; a bucket run dir every `flush_every_s` seconds (and
  at `flush()` / `close()`), one new object per file each time.
  """

  def __init__(self, model_dir: str, name: str = "train", console: bool = True,
               flush_every_s: float = 60.0):
    self.is_main = jax.process_index() == 0
    self.console = console
    self.remote = files.is_remote(model_dir)
    self.flush_every_s = flush_every_s
    self._last_flush = time.time()
    logdir = files.join(model_dir, name)
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    if self.remote and self.is_main:
      self.writer = metric_writers.MultiWriter(
          [metric_writers.LoggingWriter(), RemoteSummaryWriter(logdir)])
    else:
      self.writer = metric_writers.create_default_writer(
          logdir, just_logging=not self.is_main, asynchronous=False)
    self.jsonl_path = files.join(model_dir, f"{name}_metrics.jsonl")
    self.jsonl = files.LineWriter(self.jsonl_path, flush_every_s=float("inf"))

  def write(self, step: int, metrics: Mapping, console_keys=None) -> None:
    flat = {}
    for k, v in _flatten(metrics):
      s = _scalar(v)
      if s is not None:
        flat[k] = s
    self.writer.write_scalars(step, flat)
    if self.is_main:
      self.jsonl.write(json.dumps({"step": int(step), **flat}))
    if not self.remote or time.time() - self._last_flush >= self.flush_every_s:
      self.flush()
    if self.console:
      keys = console_keys or [k for k in flat if "/" not in k]
      msg = " ".join(f"{k}={_fmt(flat[k])}" for k in keys if k in flat)
      print(f"[step {step}] {msg}", file=sys.stdout, flush=True)
      logging.info("[step %d] %s", step, msg)

  def flush(self) -> None:
    """Writes what is buffered (bucket: new part objects; local: a file flush)."""
    self._last_flush = time.time()
    self.writer.flush()
    if self.is_main:
      self.jsonl.flush()

  def close(self) -> None:
    self.writer.close()
    if self.is_main:
      self.jsonl.close()


def _fmt(x: float) -> str:
  return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def _flatten(tree: Mapping, prefix: str = ""):
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      yield from _flatten(v, key + "/")
    else:
      yield key, v
