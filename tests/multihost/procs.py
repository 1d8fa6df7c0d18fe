"""Real local JAX processes for the multi-host tests (no mock of jax.distributed).

`launch(module, args, num_processes, devices_per_process)` starts
`python -m <module> --multihost --coordinator_address=127.0.0.1:<free port>
--num_processes=N --process_id=i ...` N times, each process with its own
fake CPU devices (`--xla_force_host_platform_device_count`), as JAX's own
multi-process tests do; `run(...)` waits for them. `num_processes=None` runs
one plain process (no --multihost) holding N x k devices: the reference.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNI = os.path.join(REPO, "data", "sni_sample")
VOCAB = os.path.join(REPO, "data", "vocab", "sni_sample_512.model")
TIMEOUT_S = 900
TRAIN_TASK = "sni_task1146_country_capital"
# LoRA, not MoDE: MoDE's experts start identical, so its router gradients are
# zero up to rounding, and Adafactor turns that rounding into +-lr updates
# whose signs depend on the all-reduce order (one process vs several).
GIN_FILES = ("models/tiny.gin", "adapters/lora.gin")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices: int) -> dict:
  """The environment of one process with `devices` fake CPU devices."""
  e = dict(os.environ)
  # The suite's flags (tests/conftest.py) with this process's device count.
  flags = [f for f in e.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  e["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  e["JAX_PLATFORMS"] = "cpu"
  e["TF_CPP_MIN_LOG_LEVEL"] = "3"
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  # One intra-op thread each: N processes share the machine's cores.
  e.setdefault("OMP_NUM_THREADS", "1")
  return e


@dataclasses.dataclass
class Group:
  """Started processes; `wait()` returns their outputs."""
  procs: list
  logs: list

  def wait(self, timeout: float = TIMEOUT_S) -> list[str]:
    deadline = time.time() + timeout
    try:
      for p in self.procs:
        p.wait(max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      self.kill()
      raise
    outs = [open(log).read() for log in self.logs]
    for i, (p, out) in enumerate(zip(self.procs, outs)):
      if p.returncode != 0:
        raise AssertionError(f"process {i} exited with {p.returncode}:\n{out[-4000:]}")
    return outs

  def kill(self) -> None:
    """SIGKILL of every process (as a preemption)."""
    for p in self.procs:
      if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    for p in self.procs:
      p.wait()

  def output(self, i: int) -> str:
    return open(self.logs[i]).read()


def launch(module: str, args: list[str], num_processes: int | None, devices_per_process: int,
           log_dir: str) -> Group:
  """Starts the processes (see the module docstring); logs go to `log_dir`."""
  os.makedirs(log_dir, exist_ok=True)
  if num_processes is None:
    cmds, devices = [[sys.executable, "-m", module, *args]], devices_per_process
  else:
    port = free_port()
    cmds = [[sys.executable, "-m", module, "--multihost",
             f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
             f"--process_id={i}", *args] for i in range(num_processes)]
    devices = devices_per_process
  procs, logs = [], []
  for i, cmd in enumerate(cmds):
    log = os.path.join(log_dir, f"process_{i}.log")
    with open(log, "w") as f:
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env(devices), stdout=f,
                                    stderr=subprocess.STDOUT))
    logs.append(log)
  return Group(procs, logs)


def run(module: str, args: list[str], num_processes: int | None, devices_per_process: int,
        log_dir: str, timeout: float = TIMEOUT_S) -> list[str]:
  return launch(module, args, num_processes, devices_per_process, log_dir).wait(timeout)


def gin_args(model_dir: str, cache_dir: str, steps: int, extra=()) -> list[str]:
  """Flags of `mode_jax.train` on the tiny config (as tests/test_train.py)."""
  # One task rather than the sample's 20-task mixture: each process's data
  # state holds seqio's shuffle buffer of every task in the mixture.
  bindings = [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}", "BATCH_SIZE = 8",
              f"MIXTURE_OR_TASK_NAME = '{TRAIN_TASK}'",
              f"SNI_DIR = '{SNI}'", f"VOCAB_PATH = '{VOCAB}'", "INPUT_LENGTH = 48",
              "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8}", "RANK = 4",
              "train.allow_missing = True", f"train.cache_dir = '{cache_dir}'",
              "train.checkpoint_every = 2", "train.log_every = 1",
              "train.async_checkpoint = False",
              "optim.OptimizerConfig.learning_rate = 0.01",
              "optim.OptimizerConfig.clip_norm = None", *extra]
  return ([f"--gin_file={f}" for f in GIN_FILES + ("runs/finetune.gin",)] + [f"--gin_bindings={b}" for b in bindings])
