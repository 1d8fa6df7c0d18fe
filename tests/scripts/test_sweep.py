"""sweep.py: the TPU dry run's exact commands, the print backend, resume detection."""

import os
import shlex
import stat

from mode_jax.experiments import backends
from mode_jax.experiments import points as points_lib
from mode_jax.experiments import rundirs
from tests.scripts.conftest import fake_run

GIN = "experiments/sweep_gemma_2b.gin"


def _inner(entry, name):
  return (f"python3 -m mode_jax.{entry} --multihost --gin_file={GIN} "
          f"--gin_file=adapters/mode.gin "
          f"'--gin_bindings=MODEL_DIR=\"gs://bkt/sweeps/{name}\"' "
          f"'--gin_bindings=BASE_CHECKPOINT=\"gs://bkt/gemma_2b\"' "
          f"--gin_bindings=RANK=4 --gin_bindings=EXPERTS={name[6]} "
          f"--gin_bindings=EXPERT_RANK=1 --gin_bindings=train.seed=0 "
          f"'--gin_bindings=VOCAB_PATH=\"gs://bkt/tok.model\"' "
          f"'--gin_bindings=TRAIN_STEPS = 100'")


def test_tpu_dry_run_exact_commands(scripts, capsys):
  sweep = scripts("sweep")
  assert sweep.main(["--method", "mode", "--experts", "4", "8", "--rank", "4",
                     "--gin_file", GIN, "--root", "gs://bkt/sweeps", "--backend", "tpu",
                     "--tpu", "my-v4-32", "--zone", "us-central2-b",
                     "--base_checkpoint", "gs://bkt/gemma_2b", "--vocab_path", "gs://bkt/tok.model",
                     "--gin_bindings", "TRAIN_STEPS = 100"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2
  for line, name in zip(lines, ["mode_m4_R4_p1_s0", "mode_m8_R4_p1_s0"]):
    inner = f"cd ~/mode_jax && {_inner('train', name)} && {_inner('eval', name)}"
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32", "--zone", "us-central2-b",
            "--worker=all", "--command", inner]
    assert line == shlex.join(argv)
    assert shlex.split(line) == argv
    # What each worker's shell runs: exactly the entry points' argv.
    cmds = shlex.split(inner.split(" && ", 1)[1])
    train = cmds[:cmds.index("&&")]
    assert train[:5] == ["python3", "-m", "mode_jax.train", "--multihost",
                         f"--gin_file={GIN}"]
    assert f'--gin_bindings=MODEL_DIR="gs://bkt/sweeps/{name}"' in train


def test_tpu_command_with_project_and_no_eval():
  job = backends.make_job(points_lib.Point("lora", 64), "gs://b/r", [GIN])
  argv = backends.tpu_command(job, "v5", "europe-west4-a", project="proj", skip_eval=True)
  assert argv[:11] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v5", "--zone",
                       "europe-west4-a", "--worker=all", "--project", "proj"]
  assert argv[-1].count("mode_jax.train") == 1
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
