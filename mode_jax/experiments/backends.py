"""From sweep points to commands, and three ways to run them.

Every point is a `Job`: its MODEL_DIR (`<root>/<point.name>`), gin files
(the experiment's, then `adapters/<method>.gin`) and gin bindings (MODEL_DIR,
BASE_CHECKPOINT, the point's macros, then the user's). A job is two entry
point calls, `python -m mode_jax.train` and `python -m mode_jax.eval`, with
the same flags.

Backends:
  local  runs the jobs one after another as subprocesses (logs in
         `<MODEL_DIR>/train.log`, `eval.log`), skipping finished points.
  print  prints the commands (a shell script).
  tpu    `gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all` commands
         (tpu_vm.py): set up every worker, start the jobs detached (train
         then eval with --multihost on every worker of a VM or pod slice,
         per-worker logs in each run dir), attach, stop.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

from mode_jax import files
from mode_jax.experiments import points as points_lib
from mode_jax.experiments import rundirs
from mode_jax.experiments import tpu_vm

# Relative paths in the gin files (SNI_DIR) are relative to the repository.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_MODULE = "train"
EVAL_MODULE = "eval"


@dataclasses.dataclass(frozen=True)
class Job:
  """One point of a sweep, resolved into a run directory and gin flags."""
  point: points_lib.Point
  model_dir: str
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]

  def to_json(self) -> dict:
    return {"name": self.point.name, "label": self.point.label, "point": self.point.to_json(),
            "model_dir": self.model_dir, "gin_files": list(self.gin_files),
            "bindings": list(self.bindings)}


def join(root: str, name: str) -> str:
  """Path join that keeps bucket paths (gs://...) intact."""
  return files.join(root, name)


def make_job(point: points_lib.Point, root: str, gin_files: Sequence[str],
             bindings: Sequence[str] = (), base_checkpoint: str | None = None,
             targets: Sequence[str] | None = None) -> Job:
  """The job of `point` under `root`.

  Args:
    point: the sweep point.
    root: sweep directory (local path or gs:// bucket path).
    gin_files: experiment gin files, before the point's adapter gin file.
    bindings: extra gin bindings, applied last (they override the point's).
    base_checkpoint: BASE_CHECKPOINT (None: the gin files' value).
    targets: TARGETS (None: the adapter gin file's).
  """
  model_dir = join(root, point.name)
  out = [f"MODEL_DIR={points_lib.gin_value(model_dir)}"]
  if base_checkpoint:
    out.append(f"BASE_CHECKPOINT={points_lib.gin_value(base_checkpoint)}")
  out += point.gin_bindings(targets)
  out += list(bindings)
  return Job(point, model_dir, tuple(gin_files) + (point.gin_file(),), tuple(out))


def entry_argv(entry: str, job: Job, python: str = "python", multihost: bool = False,
               extra: Sequence[str] = ()) -> list[str]:
  """`python -m mode_jax.<entry> [--multihost] --gin_file=... --gin_bindings=...`
  (one flag per file and binding)."""
  argv = [python, "-m", f"mode_jax.{entry}"] + (["--multihost"] if multihost else [])
  argv += [f"--gin_file={f}" for f in job.gin_files]
  argv += [f"--gin_bindings={b}" for b in tuple(job.bindings) + tuple(extra)]
  return argv


def commands(job: Job, python: str = "python", multihost: bool = False,
             skip_eval: bool = False) -> list[list[str]]:
  """The train (and eval) argv lists of a job."""
  out = [entry_argv(TRAIN_MODULE, job, python, multihost)]
  if not skip_eval:
    out.append(entry_argv(EVAL_MODULE, job, python, multihost))
  return out


def print_jobs(jobs: Sequence[Job], python: str = "python", skip_eval: bool = False,
               out: Callable[[str], None] = print) -> None:
  """Prints every job's commands, one shell line each."""
  for job in jobs:
    out(f"# {job.point.label} (seed {job.point.seed}) -> {job.model_dir}")
    for argv in commands(job, python, skip_eval=skip_eval):
      out(shlex.join(argv))


def finished(model_dir: str, skip_eval: bool = False) -> bool:
  return rundirs.train_done(model_dir) if skip_eval else rundirs.is_finished(model_dir)


def run_local(jobs: Sequence[Job], python: str = sys.executable, resume: bool = True,
              skip_eval: bool = False, fail_fast: bool = False,
              log: Callable[[str], None] = print, env: dict | None = None) -> list[dict]:
  """Runs the jobs one after another as subprocesses.

  Finished points (train summary and eval metrics present) are skipped when
  `resume`; a point with a summary but no metrics is only evaluated; an
  interrupted training resumes from its latest checkpoint (train.py does).

  Returns:
    Per job {"name", "status": "skipped" | "done" | "failed", "seconds"}.
  """
  env = dict(os.environ if env is None else env)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  results = []
  for i, job in enumerate(jobs):
    head = f"[{i + 1}/{len(jobs)}] {job.point.name}"
    if resume and finished(job.model_dir, skip_eval):
      log(f"{head}: finished, skipped")
      results.append({"name": job.point.name, "status": "skipped", "seconds": 0.0})
      continue
    files.makedirs(job.model_dir)
    rundirs.write_json(files.join(job.model_dir, rundirs.POINT_FILE), job.to_json())
    times = rundirs.read_json(files.join(job.model_dir, rundirs.TIMES_FILE), {})
    status, t0 = "done", time.time()
    steps = [("train", commands(job, python, skip_eval=True)[0], rundirs.train_done)]
    if not skip_eval:
      steps.append(("eval", commands(job, python)[1], rundirs.eval_done))
    for kind, argv, done in steps:
      if resume and done(job.model_dir):
        continue
      log_path = files.join(job.model_dir, f"{kind}.log")
      log(f"{head}: {kind} (log: {log_path})")
      t = time.time()
      rc = _call_logged(argv, log_path, env)
      times[f"{kind}_seconds"] = time.time() - t
      rundirs.write_json(files.join(job.model_dir, rundirs.TIMES_FILE), times)
      if rc:
        status = "failed"
        log(f"{head}: {kind} FAILED (exit {rc}); see {job.model_dir}/{kind}.log")
        break
    results.append({"name": job.point.name, "status": status, "seconds": time.time() - t0})
    log(f"{head}: {status} in {time.time() - t0:.0f}s")
    if status == "failed" and fail_fast:
      break
  return results


def _call_logged(argv: list[str], log_path: str, env: dict) -> int:
  """Runs `argv` with its output appended to `log_path`.

  A bucket object cannot be a subprocess's stdout: the output goes to a
  local temporary file, uploaded (beside the earlier attempts' logs) when
  the process ends.
  """
  if not files.is_remote(log_path):
    with open(log_path, "a") as f:
      return subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
  with tempfile.NamedTemporaryFile("w+b", suffix=".log") as f:
    rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    f.flush()
    f.seek(0)
    old = files.read_bytes(log_path) if files.exists(log_path) else b""
    files.write_bytes(log_path, old + f.read())
  return rc


def tpu_steps(jobs: Sequence[Job], python: str = "python3",
              skip_eval: bool = False) -> list[tuple[str, str, list[str]]]:
  """(model_dir, entry, argv) of every job's train (and eval), --multihost."""
  out = []
  for job in jobs:
    for entry, argv in zip((TRAIN_MODULE, EVAL_MODULE),
                           commands(job, python, multihost=True, skip_eval=skip_eval)):
      out.append((job.model_dir, entry, argv))
  return out


def run_tpu(jobs: Sequence[Job], vm: tpu_vm.TpuVm, action: str = "start", sweep: str = "sweep",
            dry_run: bool = True, resume: bool = True, skip_eval: bool = False,
            commit: str | None = None, repo_url: str | None = None,
            log: Callable[[str], None] = print) -> list[list[str]]:
  """Runs (or, with dry_run, only prints) one TPU VM action (tpu_vm.ACTIONS).

  `start` launches every job not yet finished, train then eval, one after
  another in one detached script on every worker. Resume checks read the
  bucket; a dry run does not touch it and lists every point.

  Returns:
    The argv lists (run or to be run).
  """
  if action not in tpu_vm.ACTIONS:
    raise ValueError(f"unknown TPU action {action!r}; known: {tpu_vm.ACTIONS}")
  if action == "setup":
    cmds = tpu_vm.setup_commands(vm, commit, repo_url)
  elif action == "attach":
    cmds = [tpu_vm.attach_command(vm, sweep)]
  elif action == "stop":
    cmds = [tpu_vm.stop_command(vm, sweep)]
  else:
    todo = []
    for job in jobs:
      if not dry_run and resume and finished(job.model_dir, skip_eval):
        log(f"# {job.point.name}: finished, skipped")
        continue
      todo.append(job)
    if not todo:
      return []
    cmds = [tpu_vm.start_command(vm, tpu_steps(todo, vm.python, skip_eval), sweep)]
    if not dry_run:
      for job in todo:
        files.makedirs(job.model_dir)
        rundirs.write_json(files.join(job.model_dir, rundirs.POINT_FILE), job.to_json())
  for argv in cmds:
    log(shlex.join(argv))
    if not dry_run:
      rc = subprocess.call(argv, cwd=REPO)
      if rc:
        log(f"# FAILED (exit {rc}): {argv[:6]}")
        break
  return cmds
