"""Where metrics go: the console, TensorBoard event files and a JSONL file."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Mapping

import jax
import numpy as np
from clu import metric_writers

from mode_jax import files


def _scalar(v):
  v = np.asarray(v)
  return float(v) if v.size == 1 else None


class MetricsLogger:
  """Writes scalars to `<model_dir>/<name>` (TensorBoard) and `<name>.jsonl`.

  Only process 0 writes files; every process may print.
  """

  def __init__(self, model_dir: str, name: str = "train", console: bool = True):
    self.is_main = jax.process_index() == 0
    self.console = console
    self.writer = metric_writers.create_default_writer(
        os.path.join(model_dir, name), just_logging=not self.is_main, asynchronous=False)
    self.jsonl_path = files.join(model_dir, f"{name}_metrics.jsonl")

  def write(self, step: int, metrics: Mapping, console_keys=None) -> None:
    flat = {}
    for k, v in _flatten(metrics):
      s = _scalar(v)
      if s is not None:
        flat[k] = s
    self.writer.write_scalars(step, flat)
    self.writer.flush()
    if self.is_main:
      files.append_line(self.jsonl_path, json.dumps({"step": int(step), **flat}))
    if self.console:
      keys = console_keys or [k for k in flat if "/" not in k]
      msg = " ".join(f"{k}={_fmt(flat[k])}" for k in keys if k in flat)
      print(f"[step {step}] {msg}", file=sys.stdout, flush=True)
      logging.info("[step %d] %s", step, msg)

  def close(self) -> None:
    self.writer.close()


def _fmt(x: float) -> str:
  return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def _flatten(tree: Mapping, prefix: str = ""):
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      yield from _flatten(v, key + "/")
    else:
      yield key, v
