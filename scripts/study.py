"""The CPU-scale study, one command: disjoint base, 4 methods x 3 seeds, seen and unseen tasks.

  python scripts/study.py --root work_dirs/study            # resumable: rerun to continue
  python scripts/study.py --root work_dirs/study --jobs 2   # two runs at a time, a core each
  python scripts/study.py --root work_dirs/study --report_only

Steps (each skipped when its outputs exist, so an interrupted study resumes):
  1. the base: the tiny model trained in full on the 26 tasks of
     data/sni_full_sample/base (cached, shared with the quickstart);
  2. the preset's points (default `study`: LoRA, MoLoRA, MoLoRA-SD, MoDE at
     the trainable budget of MoDE 8x4, seeds 0-2) trained on the 27 other
     train-split tasks (data/sni_full_sample/adapters) and evaluated on their
     held-out 10% ("seen"), through the sweep's local backend;
  3. every run, and the frozen base alone, evaluated on the 10 test-split
     tasks ("unseen", never trained on by anyone);
  4. routing of every MoDE run (scripts/routing.py) on the seen tasks;
  steps 2-4 go run by run, seed 0 of every method first;
  5. the report ROOT/report/: collect.py's tables and plots, per-method
     tables, every pair of methods (mean ROUGE-L difference with a paired
     bootstrap 95% CI over instances, seeds resampled; task win rate with an
     exact sign test) for seen and unseen tasks, and whether tasks of one
     category share experts (permutation test), with figures.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mode_jax.experiments import backends  # noqa: E402
from mode_jax.experiments import presets  # noqa: E402
from mode_jax.experiments import rundirs  # noqa: E402
from mode_jax.experiments import study as study_lib  # noqa: E402

REPO = backends.REPO


def unseen_job_argv(job: backends.Job, python: str) -> list[str]:
  """The evaluation of a run on the test-split tasks (predictions_test.jsonl)."""
  return backends.entry_argv(backends.EVAL_MODULE, job, python, extra=[
      'evaluate.split="test"', 'evaluate.predictions_file="predictions_test.jsonl"'])


def base_job(root: str, gin_files, base: str) -> backends.Job:
  """The frozen base alone, evaluated like a run: no adapter is built or restored
  (`evaluate.adapter=None`; ADAPTER must still be bound, so lora.gin is included)."""
  from mode_jax.experiments import points  # pylint: disable=g-import-not-at-top
  model_dir = os.path.join(root, "base_only")
  bindings = (f"MODEL_DIR={points.gin_value(model_dir)}",
              f"BASE_CHECKPOINT={points.gin_value(base)}", "RANK=1", "evaluate.adapter=None")
  return backends.Job(points.Point("lora", 1), model_dir,
                      tuple(gin_files) + ("adapters/lora.gin",), bindings)


def _run(argv, log_path, env) -> int:
  with open(log_path, "a") as f:
    return subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def evaluate_split(job: backends.Job, split: str, python: str, log=print) -> None:
  """One evaluation of a job on `split` (validation: seen, test: unseen), unless done."""
  if rundirs.eval_files(job.model_dir, split):
    return
  os.makedirs(job.model_dir, exist_ok=True)
  argv = (unseen_job_argv(job, python) if split == "test" else
          backends.entry_argv(backends.EVAL_MODULE, job, python))
  env = dict(os.environ)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  t = time.time()
  log(f"{job.model_dir}: eval {split}")
  rc = _run(argv, os.path.join(job.model_dir, f"eval_{split}.log"), env)
  times = rundirs.read_json(os.path.join(job.model_dir, rundirs.TIMES_FILE), {})
  times[f"eval_{split}_seconds"] = time.time() - t
  rundirs.write_json(os.path.join(job.model_dir, rundirs.TIMES_FILE), times)
  if rc:
    log(f"{job.model_dir}: eval {split} FAILED (exit {rc}), see eval_{split}.log")


def routing_run(job: backends.Job, python: str, log=print) -> None:
  """scripts/routing.py on a trained MoDE run without routing/routing.json."""
  if job.point.method != "mode" or not rundirs.train_done(job.model_dir):
    return
  if os.path.exists(os.path.join(job.model_dir, "routing", "routing.json")):
    return
  log(f"{job.model_dir}: routing")
  t = time.time()
  rc = _run([python, os.path.join(REPO, "scripts", "routing.py"), job.model_dir],
            os.path.join(job.model_dir, "routing.log"), dict(os.environ))
  times = rundirs.read_json(os.path.join(job.model_dir, rundirs.TIMES_FILE), {})
  times["routing_seconds"] = time.time() - t
  rundirs.write_json(os.path.join(job.model_dir, rundirs.TIMES_FILE), times)
  if rc:
    log(f"{job.model_dir}: routing FAILED (exit {rc}), see routing.log")


def run_job(job: backends.Job, python: str, log=print) -> None:
  """Train and evaluate (seen) one point, then its unseen evaluation and routing."""
  backends.run_local([job], python, log=log)
  if rundirs.train_done(job.model_dir):
    evaluate_split(job, "test", python, log)
    routing_run(job, python, log)


def run_jobs(jobs, python: str, num_workers: int = 1, log=print) -> None:
  """Runs the jobs in order, `num_workers` at a time.

  With several workers each worker thread pins itself to its own share of
  this process's CPUs (`os.sched_setaffinity(0, ...)` applies to the
  calling thread on Linux, and the runs it starts inherit it), so two runs
  on a 2-core machine take a core each, as one run pinned to one core does
  (the times in docs/cpu_reproduction.md). Each run directory has its own
  run lock; nothing else is shared.
  """
  if num_workers <= 1:
    for job in jobs:
      run_job(job, python, log)
    return
  cpus = sorted(os.sched_getaffinity(0))
  lock = threading.Lock()  # one line at a time from the workers

  def say(line):
    with lock:
      log(line)

  todo = queue.Queue()
  for job in jobs:
    todo.put(job)

  def worker(k):
    mine = cpus[k::num_workers] or cpus
    os.sched_setaffinity(0, mine)
    while True:
      try:
        job = todo.get_nowait()
      except queue.Empty:
        return
      run_job(job, python, lambda s: say(f"(cpu {','.join(map(str, mine))}) {s}"))

  threads = [threading.Thread(target=worker, args=(k,)) for k in range(num_workers)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--root", required=True)
  ap.add_argument("--preset", default="study", choices=sorted(presets.PRESETS))
  ap.add_argument("--seed", nargs="+", type=int, default=None, help="default: the preset's")
  ap.add_argument("--base_steps", type=int, default=None,
                  help="default: the quickstart's (shares its cached base)")
  ap.add_argument("--gin_bindings", action="append", default=[])
  ap.add_argument("--report_only", action="store_true")
  ap.add_argument("--jobs", type=int, default=1,
                  help="runs at a time, each pinned to its share of the CPUs (2 on 2 cores)")
  ap.add_argument("--python", default=sys.executable)
  args = ap.parse_args(argv)
  root = os.path.abspath(args.root)
  preset = presets.PRESETS[args.preset]
  gin_files = preset["gin_files"]
  t0 = time.time()
  from mode_jax.experiments import base as base_lib  # pylint: disable=g-import-not-at-top
  base = base_lib.quickstart_base(args.base_steps or base_lib.DEFAULT_BASE_STEPS,
                                  build=not args.report_only, gin_files=gin_files)
  from mode_jax import launch  # pylint: disable=g-import-not-at-top
  sni_dir = launch.query("train.sni_dir")  # the gin files parsed by quickstart_base
  jobs = [backends.make_job(p, root, gin_files, args.gin_bindings, base, preset.get("targets"))
          for p in presets.expand(args.preset, seeds=args.seed)]
  log = lambda s: print(s, flush=True)  # noqa: E731
  if not args.report_only:
    log(f"study: {len(jobs)} runs under {root}; base {base}")
    for split in study_lib.SPLITS:  # the frozen base alone, the reference
      evaluate_split(base_job(root, gin_files, base), split, args.python, log)
    # Run by run (seed 0 of every method first), so a partial study is usable.
    run_jobs(jobs, args.python, args.jobs, log)
  from mode_jax.experiments import study_report  # pylint: disable=g-import-not-at-top
  out = study_report.write(root, sni_dir)
  log(open(out["markdown"]).read())
  with open(os.path.join(root, "report", "study_times.json"), "a") as f:
    f.write(json.dumps({"seconds": time.time() - t0, "report_only": args.report_only}) + "\n")
  log(f"study: {time.time() - t0:.0f}s; report {out['markdown']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
