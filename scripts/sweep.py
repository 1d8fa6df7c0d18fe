"""Run a grid of adapter fine-tunings: one MODEL_DIR and one set of gin bindings per point.

A grid is either a named preset (`--preset`, see `mode_jax/experiments/
presets.py`: main_table, ablation, generalised, iso_param on Gemma 2B;
cpu_compare, cpu_ablation, cpu_smoke on the tiny quickstart base) or the
Cartesian product of `--method --experts --rank --expert_rank --lr --seed`.

  # what would run (no side effects)
  python scripts/sweep.py --preset main_table --backend print --root /tmp/main \
      --base_checkpoint /ckpt/gemma_2b
  # CPU comparison, one run after another, resumable (about 1-2 min per run
  # on 2 cores: 200 steps at batch 16, then greedy-decode evaluation)
  python scripts/sweep.py --preset cpu_compare --root work_dirs/cpu_compare
  # an explicit grid
  python scripts/sweep.py --method mode --experts 4 8 --rank 4 --seed 0 1 \
      --gin_file experiments/sweep_cpu_tiny.gin --root work_dirs/grid
  # Cloud TPU VM or pod slice (prints the gcloud commands; add --no-dry_run):
  # --tpu_action setup (code + [tpu] install on every worker), start
  # (detached; per-worker logs in each run dir), attach, stop
  python scripts/sweep.py --preset main_table --backend tpu --tpu my-v5e-32 \
      --zone us-west4-a --root gs://bucket/sweeps/main --base_checkpoint gs://...

Re-running the same command skips finished points (train_summary.json and
eval metrics present) and resumes interrupted ones from their checkpoints.
Then: `python scripts/collect.py ROOT`.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mode_jax import files  # noqa: E402
from mode_jax.experiments import backends  # noqa: E402
from mode_jax.experiments import points as points_lib  # noqa: E402
from mode_jax.experiments import presets  # noqa: E402
from mode_jax.experiments import tpu_vm  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", choices=sorted(presets.PRESETS))
  ap.add_argument("--method", nargs="+", help="adapter kinds (lora molora molora_sd mode ...)")
  ap.add_argument("--experts", nargs="+", type=int, default=[None], help="m values")
  ap.add_argument("--rank", nargs="+", type=int, help="R values")
  ap.add_argument("--expert_rank", nargs="+", type=int, default=[None],
                  help="p values (MoDE; default 1)")
  ap.add_argument("--lr", nargs="+", type=float, default=None, help="learning rates")
  ap.add_argument("--seed", nargs="+", type=int, default=None, help="seeds")
  ap.add_argument("--targets", nargs="+", default=None, help="adapted matrices (TARGETS)")
  ap.add_argument("--gin_file", action="append", default=None,
                  help="experiment gin files (default: the preset's)")
  ap.add_argument("--gin_bindings", action="append", default=[],
                  help="extra bindings for every point, e.g. TRAIN_STEPS=300")
  ap.add_argument("--root", required=True, help="sweep directory (gs://... for tpu)")
  ap.add_argument("--backend", choices=("local", "print", "tpu"), default="local")
  ap.add_argument("--base_checkpoint", default=None,
                  help="BASE_CHECKPOINT (default for cpu presets: the quickstart base)")
  ap.add_argument("--base_steps", type=int, default=200, help="quickstart base steps")
  ap.add_argument("--vocab_path", default=None, help="VOCAB_PATH (Gemma tokenizer)")
  ap.add_argument("--sni_dir", default=None, help="SNI_DIR")
  ap.add_argument("--skip_eval", action="store_true", help="train only")
  ap.add_argument("--no_resume", action="store_true", help="rerun finished points")
  ap.add_argument("--fail_fast", action="store_true")
  ap.add_argument("--python", default=None, help="interpreter of the runs")
  ap.add_argument("--tpu", help="TPU VM / pod slice name (backend tpu)")
  ap.add_argument("--zone", help="TPU zone (backend tpu)")
  ap.add_argument("--project", default=None)
  ap.add_argument("--workdir", default="~/mode_jax", help="repository on the TPU workers")
  ap.add_argument("--dry_run", action=argparse.BooleanOptionalAction, default=True,
                  help="tpu backend: print the gcloud commands only (default)")
  ap.add_argument("--tpu_action", choices=tpu_vm.ACTIONS, default="start",
                  help="tpu backend: setup (code + install on every worker), start "
                       "(detached), attach (follow worker 0's logs), stop")
  ap.add_argument("--sweep_name", default="sweep",
                  help="tpu backend: names the detached run (pid and local log files)")
  ap.add_argument("--commit", default=None,
                  help="tpu setup: install this commit of --repo_url (default: copy HEAD)")
  ap.add_argument("--repo_url", default=None, help="tpu setup with --commit: git URL")
  args = ap.parse_args(argv)
  args.root = files.absolute(args.root)
  if bool(args.preset) == bool(args.method):
    ap.error("give exactly one of --preset or --method/--rank")
  if args.method and not args.rank:
    ap.error("--method needs --rank")
  if args.backend == "tpu" and not (args.tpu and args.zone):
    ap.error("--backend tpu needs --tpu and --zone")
  return args


def build_jobs(args: argparse.Namespace) -> list[backends.Job]:
  """The jobs of the grid or preset given on the command line."""
  preset = presets.PRESETS.get(args.preset, {})
  if args.preset:
    pts = presets.expand(args.preset, seeds=args.seed, lrs=args.lr)
  else:
    pts = points_lib.grid(args.method, args.rank, args.experts, args.expert_rank,
                          args.lr or [None], args.seed or [0])
  gin_files = args.gin_file or preset.get("gin_files") or presets.CPU_GIN
  targets = args.targets or preset.get("targets")
  base = args.base_checkpoint
  if not base and (preset.get("base") == "quickstart" or (
      not args.preset and gin_files == presets.CPU_GIN)):
    from mode_jax.experiments import base as base_lib  # pylint: disable=g-import-not-at-top
    base = base_lib.quickstart_base(args.base_steps, build=args.backend == "local")
  extra = []
  if args.vocab_path:
    extra.append(f"VOCAB_PATH={points_lib.gin_value(args.vocab_path)}")
  if args.sni_dir:
    extra.append(f"SNI_DIR={points_lib.gin_value(args.sni_dir)}")
  extra += args.gin_bindings
  return [backends.make_job(p, args.root, gin_files, extra, base, targets) for p in pts]


def main(argv=None) -> int:
  args = parse_args(argv)
  jobs = build_jobs(args)
  resume = not args.no_resume
  if args.backend == "print":
    backends.print_jobs(jobs, args.python or "python", args.skip_eval)
    return 0
  if args.backend == "tpu":
    vm = tpu_vm.TpuVm(args.tpu, args.zone, args.project, args.workdir,
                      args.python or "python3")
    backends.run_tpu(jobs, vm, args.tpu_action, args.sweep_name, dry_run=args.dry_run,
                     resume=resume, skip_eval=args.skip_eval, commit=args.commit,
                     repo_url=args.repo_url)
    return 0
  print(f"{len(jobs)} points under {args.root}", flush=True)
  results = backends.run_local(jobs, args.python or sys.executable, resume=resume,
                               skip_eval=args.skip_eval, fail_fast=args.fail_fast,
                               log=lambda s: print(s, flush=True))
  failed = [r["name"] for r in results if r["status"] == "failed"]
  total = sum(r["seconds"] for r in results)
  print(f"sweep done in {total:.0f}s: {len(results) - len(failed)} ok, {len(failed)} failed "
        f"{failed if failed else ''}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
