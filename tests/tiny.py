"""The suite's one tiny trained run: its gin bindings and how it is trained.

tests/conftest.py trains it once per session (`tiny_run`): MoDE 4x4 on the
tiny config, 4 steps of batch 8 on the bundled SNI sample's train mixture,
checkpoints at steps 2 and 4, the in-training decode at step 4 on TASKS[0].
Tests that read it use it as it is; tests that damage, evaluate into or
extend it work on a copy (`copy_run`), with the same bindings, so their
train and decode steps come from the suite's compilation cache.
"""

import contextlib
import io
import os
import sys

from mode_jax import launch
from mode_jax import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNI = os.path.join(REPO, "data", "sni_sample")
VOCAB = os.path.join(REPO, "data", "vocab", "sni_sample_512.model")
TASKS = ("task1146_country_capital", "task1321_country_continent",
         "task114_is_the_given_word_longest")
GIN_FILES = ("models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin")
STEPS = 4
# The in-training evaluation of the shared run (step 4, one task, 4 tokens).
EVAL = ("train.eval_every = 4", "train.max_decode_len = 4", "train.eval_batch_size = 8",
        f"train.eval_tasks = {list(TASKS[:1])}")


def bindings(model_dir, cache_dir, steps, extra=()):
  return [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8",
          f"SNI_DIR = '{SNI}'", f"VOCAB_PATH = '{VOCAB}'", "INPUT_LENGTH = 48",
          "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8}", "RANK = 4", "EXPERTS = 4",
          "train.allow_missing = True", f"train.cache_dir = '{cache_dir}'",
          "train.checkpoint_every = 2", "train.log_every = 1", "train.async_checkpoint = False",
          "optim.OptimizerConfig.learning_rate = 0.01", "optim.OptimizerConfig.clip_norm = None",
          *extra]


def train(model_dir, cache_dir, steps, extra=(), gin_files=GIN_FILES, **kw):
  """`train.train` through gin with the shared bindings (+ `extra`); its summary."""
  launch.parse_gin(list(gin_files), bindings(model_dir, cache_dir, steps, extra))
  return launch.call_configured(lambda: train_lib.train(**kw))


class _Tee(io.TextIOBase):
  def __init__(self, *streams):
    self.streams = streams

  def write(self, s):
    for st in self.streams:
      st.write(s)
    return len(s)

  def flush(self):
    for st in self.streams:
      st.flush()


def train_capturing(model_dir, cache_dir, steps, extra=()):
  """(summary, console text) of `train`; the console still shows the lines."""
  buf = io.StringIO()
  with contextlib.redirect_stdout(_Tee(sys.stdout, buf)):
    summary = train(model_dir, cache_dir, steps, extra)
  return summary, buf.getvalue()
