"""sweep.py: the TPU dry run's exact commands, the print backend, resume detection."""

import os
import shlex
import socket
import stat
import subprocess

from mode_jax.experiments import backends
from mode_jax.experiments import points as points_lib
from mode_jax.experiments import rundirs
from mode_jax.experiments import tpu_vm
from tests.scripts.conftest import fake_run

GIN = "experiments/paper_gemma_2b.gin"


def _inner(entry, name):
  return (f"python3 -m mode_jax.{entry} --multihost --gin_file={GIN} "
          f"--gin_file=adapters/mode.gin "
          f"'--gin_bindings=MODEL_DIR=\"gs://bkt/sweeps/{name}\"' "
          f"'--gin_bindings=BASE_CHECKPOINT=\"gs://bkt/gemma_2b\"' "
          f"--gin_bindings=RANK=4 --gin_bindings=EXPERTS={name[6]} "
          f"--gin_bindings=EXPERT_RANK=1 --gin_bindings=train.seed=0 "
          f"'--gin_bindings=VOCAB_PATH=\"gs://bkt/tok.model\"' "
          f"'--gin_bindings=TRAIN_STEPS = 100'")


def _script(names, log_copy):
  """The worker-side script start_command wraps, for points `names` (train and eval each)."""
  lines = ["cd ~/mode_jax", "set -u", "mkdir -p ~/mode_jax_runs/main", "H=$(hostname)"]
  for name in names:
    for entry in ("train", "eval"):
      log = f"~/mode_jax_runs/main/{name}.{entry}.$H.log"
      copy = log_copy(log, name)
      lines += [f"({_inner(entry, name)}) > {log} 2>&1 &", "P=$!",
                f"(while sleep 60; do {copy} >/dev/null 2>&1; done) &", "U=$!",
                "wait $P; RC=$?", "kill $U", copy, "[ $RC -eq 0 ] || exit $RC"]
  return tpu_vm.one_line(lines)


SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5e-32", "--zone", "us-west4-a",
       "--worker=all", "--command"]


def test_tpu_dry_run_exact_commands(scripts, capsys):
  sweep = scripts("sweep")
  common = ["--method", "mode", "--experts", "4", "8", "--rank", "4", "--gin_file", GIN,
            "--root", "gs://bkt/sweeps", "--backend", "tpu", "--tpu", "my-v5e-32",
            "--zone", "us-west4-a", "--base_checkpoint", "gs://bkt/gemma_2b",
            "--vocab_path", "gs://bkt/tok.model", "--gin_bindings", "TRAIN_STEPS = 100",
            "--sweep_name", "main"]
  assert sweep.main(common) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1  # one detached script runs both points in turn
  script = _script(["mode_m4_R4_p1_s0", "mode_m8_R4_p1_s0"], lambda log, name: (
      f"gcloud storage cp --quiet {log} gs://bkt/sweeps/{name}/logs/"))
  inner = (f"mkdir -p ~/mode_jax_runs && setsid nohup bash -c {shlex.quote(script)} "
           "> ~/mode_jax_runs/main.out 2>&1 < /dev/null & echo $! > ~/mode_jax_runs/main.pid")
  assert lines[0] == shlex.join(SSH + [inner])
  # What each worker's shell runs: exactly the entry points' argv.
  train = shlex.split(script.split("; (", 1)[1].split(") > ")[0])
  assert train[:5] == ["python3", "-m", "mode_jax.train", "--multihost", f"--gin_file={GIN}"]
  assert '--gin_bindings=MODEL_DIR="gs://bkt/sweeps/mode_m4_R4_p1_s0"' in train

  assert sweep.main(common + ["--tpu_action", "stop"]) == 0
  assert capsys.readouterr().out.strip() == shlex.join(SSH + [
      "test -f ~/mode_jax_runs/main.pid && kill -TERM -- -$(cat ~/mode_jax_runs/main.pid) "
      "&& rm -f ~/mode_jax_runs/main.pid"])
  assert sweep.main(common + ["--tpu_action", "attach"]) == 0
  assert capsys.readouterr().out.strip() == shlex.join(
      SSH[:8] + ["--worker=0", "--command", "tail -n 50 -F ~/mode_jax_runs/main/*.log"])
  assert sweep.main(common + ["--tpu_action", "setup"]) == 0
  install = "cd ~/mode_jax && python3 -m pip install --quiet -e '.[tpu]'"
  assert capsys.readouterr().out.strip().splitlines() == [
      "git archive --format=tar.gz -o /tmp/mode_jax.tar.gz HEAD",
      "gcloud compute tpus tpu-vm scp /tmp/mode_jax.tar.gz my-v5e-32:mode_jax.tar.gz "
      "--zone us-west4-a --worker=all",
      shlex.join(SSH + ["mkdir -p ~/mode_jax && tar -xzf ~/mode_jax.tar.gz -C ~/mode_jax && "
                        + install])]
  assert sweep.main(common + ["--tpu_action", "setup", "--commit", "abc123", "--repo_url",
                              "https://example.com/mode_jax.git"]) == 0
  assert capsys.readouterr().out.strip() == shlex.join(SSH + [
      "(test -d ~/mode_jax/.git || git clone --quiet https://example.com/mode_jax.git "
      "~/mode_jax) && git -C ~/mode_jax fetch --quiet origin && "
      "git -C ~/mode_jax checkout --quiet abc123 && " + install])


def test_tpu_worker_script_runs_and_keeps_logs(tmp_path):
  """The worker script itself, run by bash here with a fake python: logs land
  in each run dir (a local path here), and a failing step stops the sweep."""
  fake = tmp_path / "fakepy"
  fake.write_text("#!/bin/sh\necho \"ran $2\"\ncase \"$*\" in *fail*) exit 3;; esac\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  pts = [points_lib.Point("lora", 4), points_lib.Point("lora", 8)]
  jobs = [backends.make_job(p, str(tmp_path / "runs"), [GIN]) for p in pts]
  steps = backends.tpu_steps(jobs, str(fake))
  runs = tmp_path / "home"
  script = tpu_vm.job_script(steps, "s").replace("~/mode_jax_runs", str(runs))
  assert subprocess.run(["bash", "-c", script], check=False).returncode == 0
  host = socket.gethostname()
  for job in jobs:
    for entry in ("train", "eval"):
      name = f"{os.path.basename(job.model_dir)}.{entry}.{host}.log"
      log = os.path.join(job.model_dir, "logs", name)
      assert open(log).read() == f"ran mode_jax.{entry}\n"
  jobs[0] = backends.make_job(pts[0], str(tmp_path / "runs"), [GIN], ["fail=1"])
  script = tpu_vm.job_script(backends.tpu_steps(jobs, str(fake)), "t").replace(
      "~/mode_jax_runs", str(runs))
  assert subprocess.run(["bash", "-c", script], check=False).returncode == 3
  assert len(os.listdir(runs / "t")) == 1  # nothing ran after the failed train


def test_tpu_command_with_project_and_no_eval():
  job = backends.make_job(points_lib.Point("lora", 64), "gs://b/r", [GIN])
  vm = tpu_vm.TpuVm("v5", "europe-west4-a", project="proj")
  argv = backends.run_tpu([job], vm, skip_eval=True, log=lambda s: None)[0]
  assert argv[:11] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v5", "--zone",
                       "europe-west4-a", "--worker=all", "--project", "proj"]
  assert argv[-1].count("mode_jax.train") == 1 and "mode_jax.eval" not in argv[-1]
  assert "adapters/lora.gin" in argv[-1] and "EXPERTS" not in argv[-1]


def test_print_backend(scripts, capsys, tmp_path):
  sweep = scripts("sweep")
  sweep.main(["--method", "lora", "mode", "--rank", "4", "--experts", "2", "--seed", "0", "1",
              "--gin_file", GIN, "--root", str(tmp_path), "--backend", "print",
              "--base_checkpoint", "/ckpt"])
  lines = capsys.readouterr().out.strip().splitlines()
  heads = [l for l in lines if l.startswith("#")]
  assert [h.split(" -> ")[1] for h in heads] == [
      str(tmp_path / n) for n in ("lora_R4_s0", "lora_R4_s1", "mode_m2_R4_p1_s0",
                                  "mode_m2_R4_p1_s1")]
  cmds = [shlex.split(l) for l in lines if not l.startswith("#")]
  assert len(cmds) == 8
  assert cmds[0][:3] == ["python", "-m", "mode_jax.train"]
  assert cmds[1][2] == "mode_jax.eval"
  assert "--gin_bindings=EXPERTS=2" not in cmds[0] and "--gin_bindings=EXPERTS=2" in cmds[4]
  assert "--gin_bindings=train.seed=1" in cmds[2]
  assert not os.listdir(tmp_path)  # printing has no side effects


def test_resume_skips_finished_points(tmp_path):
  calls = tmp_path / "calls.txt"
  fake_python = tmp_path / "fakepy"
  fake_python.write_text(f"#!/bin/sh\necho \"${{2#mode_jax.}}\" >> {calls}\n")
  fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
  root = tmp_path / "sweep"
  pts = [points_lib.Point("mode", 4, 2, 1), points_lib.Point("mode", 4, 4, 1),
         points_lib.Point("lora", 8)]
  jobs = [backends.make_job(p, str(root), [GIN]) for p in pts]
  fake_run(jobs[0].model_dir, pts[0].to_json(), {"t": 1.0})             # finished
  fake_run(jobs[1].model_dir, pts[1].to_json(), {"t": 1.0}, with_eval=False)  # trained only
  assert rundirs.is_finished(jobs[0].model_dir)
  assert not rundirs.is_finished(jobs[1].model_dir)
  logs = []
  res = backends.run_local(jobs, python=str(fake_python), log=logs.append)
  assert [r["status"] for r in res] == ["skipped", "done", "done"]
  # the trained-only point is evaluated, the new point trained and evaluated
  assert calls.read_text().split() == ["eval", "train", "eval"]
  assert any("finished, skipped" in l for l in logs)
  assert rundirs.read_json(os.path.join(jobs[2].model_dir, "point.json"))["name"] == "lora_R8_s0"
  calls.write_text("")
  backends.run_local(jobs, python=str(fake_python), resume=False, log=logs.append)
  assert calls.read_text().split() == ["train", "eval"] * 3
