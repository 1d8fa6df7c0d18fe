"""The sweep's TPU backend: gcloud commands for a TPU VM or pod slice.

Four actions, each one `gcloud compute tpus tpu-vm ssh NAME --worker=all`
(plus an `scp` for copying code), so every worker of a slice does the same:

  setup   puts the code on every worker (a `git archive` of the local
          checkout, or a clone of a pinned commit) and installs it with the
          `[tpu]` extra (libtpu pinned to the JAX version).
  start   runs the sweep's jobs one after another, detached (`setsid nohup`),
          so closing the ssh session does not stop them; each worker writes
          its log to `<MODEL_DIR>/logs/<entry>.<hostname>.log` (uploaded with
          `gcloud storage cp` when MODEL_DIR is on gs://, every 60 s and at
          the end) and keeps a local copy under `~/mode_jax_runs/<sweep>/`.
  attach  follows worker 0's logs (`tail -F`); Ctrl-C detaches, the run
          goes on.
  stop    kills the detached process group on every worker.

Only `start`'s inner script depends on the jobs; all commands are built as
argv lists (tested as exact strings) and run with `subprocess.call`.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Sequence

RUNS_DIR = "~/mode_jax_runs"
ACTIONS = ("setup", "start", "attach", "stop")


@dataclasses.dataclass(frozen=True)
class TpuVm:
  """Where the sweep runs: a TPU VM or pod slice and the repository on its workers."""
  name: str
  zone: str
  project: str | None = None
  workdir: str = "~/mode_jax"
  python: str = "python3"

  def ssh(self, command: str, worker: str = "all") -> list[str]:
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name, "--zone", self.zone,
            f"--worker={worker}"]
    if self.project:
      argv += ["--project", self.project]
    return argv + ["--command", command]

  def scp(self, local: str, remote: str) -> list[str]:
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{self.name}:{remote}",
            "--zone", self.zone, "--worker=all"]
    if self.project:
      argv += ["--project", self.project]
    return argv


def setup_commands(vm: TpuVm, commit: str | None = None, repo_url: str | None = None,
                   archive: str = "/tmp/mode_jax.tar.gz") -> list[list[str]]:
  """Commands that put the code on every worker and install it with `[tpu]`.

  Without `commit`: archive the local checkout's HEAD (`git archive`; commit
  first), copy it to every worker and unpack it into `vm.workdir`. With
  `commit`: every worker clones `repo_url` and checks the commit out.
  """
  install = f"cd {vm.workdir} && {vm.python} -m pip install --quiet -e '.[tpu]'"
  if commit:
    if not repo_url:
      raise ValueError("setup with a pinned commit needs repo_url")
    fetch = (f"(test -d {vm.workdir}/.git || git clone --quiet {shlex.quote(repo_url)} "
             f"{vm.workdir}) && git -C {vm.workdir} fetch --quiet origin && "
             f"git -C {vm.workdir} checkout --quiet {shlex.quote(commit)}")
    return [vm.ssh(f"{fetch} && {install}")]
  name = archive.rsplit("/", 1)[-1]
  return [["git", "archive", "--format=tar.gz", "-o", archive, "HEAD"],
          vm.scp(archive, name),  # relative: the worker's home directory
          vm.ssh(f"mkdir -p {vm.workdir} && tar -xzf ~/{name} -C {vm.workdir} && {install}")]


def _log_copy(local: str, remote_dir: str) -> str:
  """Shell that copies a worker's log file into the run directory."""
  if "://" in remote_dir:
    return f"gcloud storage cp --quiet {local} {shlex.quote(remote_dir)}/"
  return f"mkdir -p {shlex.quote(remote_dir)} && cp {local} {shlex.quote(remote_dir)}/"


def job_script(steps: Sequence[tuple[str, str, Sequence[str]]], sweep: str) -> str:
  """The worker-side script of `start`: each (model_dir, entry, argv) in turn.

  Each step logs to `RUNS_DIR/<sweep>/<basename(model_dir)>.<entry>.$HOST.log`,
  copied to `<model_dir>/logs/` every 60 s while it runs and when it ends; a
  failed step stops the sweep (its exit code is the script's).
  """
  lines = ["set -u", f"mkdir -p {RUNS_DIR}/{sweep}", "H=$(hostname)"]
  for model_dir, entry, argv in steps:
    base = model_dir.rstrip("/").rsplit("/", 1)[-1]
    log = f"{RUNS_DIR}/{sweep}/{base}.{entry}.$H.log"
    copy = _log_copy(log, f"{model_dir.rstrip('/')}/logs")
    lines += [
        f"({shlex.join(argv)}) > {log} 2>&1 &",
        "P=$!",
        f"(while sleep 60; do {copy} >/dev/null 2>&1; done) &",
        "U=$!",
        "wait $P; RC=$?",
        "kill $U",
        f"{copy}",
        "[ $RC -eq 0 ] || exit $RC"]
  return one_line(lines)


def one_line(lines: Sequence[str]) -> str:
  """Shell statements joined on one line (`&` already ends a statement)."""
  return "".join(l + (" " if l.endswith("&") else "; ") for l in lines[:-1]) + lines[-1]


def start_command(vm: TpuVm, steps: Sequence[tuple[str, str, Sequence[str]]],
                  sweep: str) -> list[str]:
  """Starts `job_script` detached on every worker; its process group id goes to a pid file."""
  script = f"cd {vm.workdir}; " + job_script(steps, sweep)
  pid = f"{RUNS_DIR}/{sweep}.pid"
  inner = (f"mkdir -p {RUNS_DIR} && setsid nohup bash -c {shlex.quote(script)} "
           f"> {RUNS_DIR}/{sweep}.out 2>&1 < /dev/null & echo $! > {pid}")
  return vm.ssh(inner)


def attach_command(vm: TpuVm, sweep: str, worker: str = "0") -> list[str]:
  return vm.ssh(f"tail -n 50 -F {RUNS_DIR}/{sweep}/*.log", worker=worker)


def stop_command(vm: TpuVm, sweep: str) -> list[str]:
  """Kills the detached sweep (its whole process group) on every worker."""
  pid = f"{RUNS_DIR}/{sweep}.pid"
  return vm.ssh(f"test -f {pid} && kill -TERM -- -$(cat {pid}) && rm -f {pid}")
