"""End to end in a bucket: train, SIGKILL after a checkpoint, resume, collect.

Everything the run touches is on the test's GCS server: MODEL_DIR, SNI_DIR,
the SNI cache, VOCAB_PATH and BASE_CHECKPOINT (a mode_jax base checkpoint).
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys

import pytest

from mode_jax import checkpoints
from mode_jax import files
from mode_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNI = os.path.join(REPO, "data", "sni_sample")
VOCAB = os.path.join(REPO, "data", "vocab", "sni_sample_512.model")
STEPS = 6


@pytest.fixture(scope="module")
def bucket_inputs(gcs):
  root = gcs["root"]
  for local in sorted(files.walk_files(SNI)):
    files.copy(local, files.join(root, "sni", os.path.relpath(local, SNI)))
  files.copy(VOCAB, files.join(root, "vocab", "tokenizer.model"))
  base = files.join(root, "base", "tiny")
  checkpoints.save_base(base, models.build_model(models.get_config("tiny"), None, seed=1))
  return {"sni": files.join(root, "sni"), "vocab": files.join(root, "vocab", "tokenizer.model"),
          "base": base, "sweep": files.join(root, "sweep")}


def _command(model_dir, inputs):
  bindings = [
      f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {STEPS}", "BATCH_SIZE = 8",
      f"SNI_DIR = '{inputs['sni']}'", f"VOCAB_PATH = '{inputs['vocab']}'",
      f"BASE_CHECKPOINT = '{inputs['base']}'", "INPUT_LENGTH = 48",
      "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8}", "RANK = 4", "EXPERTS = 4",
      "train.allow_missing = True", f"train.cache_dir = '{files.join(inputs['sweep'], '.cache')}'",
      "train.checkpoint_every = 2", "train.log_every = 1", "train.async_checkpoint = False",
      # One task: the run prepares (tokenizes) only what its mixture reads.
      "MIXTURE_OR_TASK_NAME = 'sni_task1146_country_capital'"]
  return ([sys.executable, "-m", "mode_jax.train", "--gin_file=models/tiny.gin",
           "--gin_file=adapters/mode.gin", "--gin_file=runs/finetune.gin"] +
          [f"--gin_bindings={b}" for b in bindings])


def _env(home):
  env = dict(os.environ, PYTHONPATH=REPO, HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
  # One CPU device per run (quicker to start), with the suite's other flags.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  return env


@pytest.fixture(scope="module")
def trained(gcs, bucket_inputs, tmp_path_factory):
  """Runs the train command, kills it after its first checkpoint, runs it again."""
  return _train_kill_resume(files.join(bucket_inputs["sweep"], "run_a"), bucket_inputs,
                            tmp_path_factory)


def _train_kill_resume(model_dir, bucket_inputs, tmp_path_factory):
  env = _env(tmp_path_factory.mktemp("home"))
  cmd = _command(model_dir, bucket_inputs)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          cwd=REPO, text=True)
  first = []
  for line in proc.stdout:  # checkpoints are synchronous: step 3 starts after save(2)
    first.append(line)
    if line.startswith("[step 3]"):
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait()
  first.append(proc.stdout.read())
  (tmp_path_factory.getbasetemp() / "train_killed.log").write_text("".join(first))
  killed = {"rc": proc.returncode, "log": _errors("".join(first)),
            "summary": files.exists(files.join(model_dir, "train_summary.json")),
            "steps": checkpoints.RunCheckpointer(model_dir, async_save=False).all_steps()}
  if killed["rc"] != -signal.SIGKILL:
    return {"model_dir": model_dir, "killed": killed, "rc": None, "log": ""}
  second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
  (tmp_path_factory.getbasetemp() / "train_resumed.log").write_text(second.stdout + second.stderr)
  return {"model_dir": model_dir, "killed": killed, "rc": second.returncode,
          "log": second.stdout + _errors(second.stderr)}


def _errors(log: str) -> str:
  """The step lines and the first error lines of a run's output (for messages)."""
  keep = [s for s in log.splitlines() if s.startswith("[step") or "resumed" in s or
          ("Error" in s and "Event loop" not in s)]
  return "\n".join(keep[:40])


@pytest.mark.slow
def test_killed_run_resumes_from_the_bucket(trained):
  k = trained["killed"]
  assert k["rc"] == -signal.SIGKILL, k["log"]
  assert not k["summary"] and 2 in k["steps"] and STEPS not in k["steps"], k["steps"]
  assert trained["rc"] == 0, trained["log"][-4000:]
  resumed_at = max(k["steps"])
  assert f"at step {resumed_at}" in trained["log"]
  summary = files.read_json(files.join(trained["model_dir"], "train_summary.json"))
  assert summary["step"] == STEPS and summary["latest_checkpoint"] == STEPS
  assert summary["checkpoint_dir"].startswith("gs://")


@pytest.mark.slow
def test_bucket_logs_are_part_objects_and_tensorboard_events(trained, tmp_path):
  d = trained["model_dir"]
  jsonl = files.join(d, "train_metrics.jsonl")
  assert not files.exists(jsonl) and files.part_paths(jsonl)  # parts only, never one object
  steps = [json.loads(s)["step"] for s in files.read_lines(jsonl)]
  assert steps[-(STEPS - max(trained["killed"]["steps"])):] == list(
      range(max(trained["killed"]["steps"]) + 1, STEPS + 1))
  events = files.glob(files.join(d, "train"), "events.out.tfevents.*")
  assert events, files.listdir(d)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seen = set()
  for e in events:
    local = os.path.join(tmp_path, files.basename(e))
    files.copy(e, local)
    for ev in tf.compat.v1.train.summary_iterator(local):
      if any(v.tag == "loss" for v in ev.summary.value):
        seen.add(ev.step)
  assert STEPS in seen
  assert files.exists(files.join(d, "config.gin"))


@pytest.mark.slow
def test_collect_reads_the_sweep_from_the_bucket(trained, bucket_inputs):
  sweep = bucket_inputs["sweep"]
  out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "collect.py"), sweep],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                       cwd=REPO)
  assert out.returncode == 0, out.stdout + out.stderr
  rows = list(csv.DictReader(io.StringIO(files.read_text(files.join(sweep, "results.csv")))))
  assert [r["name"] for r in rows] == ["run_a"]
  assert rows[0]["steps"] == str(STEPS) and rows[0]["trainable"]
  assert files.exists(files.join(sweep, "summary.md"))
