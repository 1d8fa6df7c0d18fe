"""The paper's motivating study: do single-task LoRAs share their factors?

One LoRA per task (single-task SeqIO tasks `sni_<task>`), all from ONE shared
initialisation (same seed), then the rank vectors of every `lora_a` (columns)
and `lora_b` (rows), across tasks, are projected on their top-3 principal
components and plotted coloured by rank position and by task. The clustering
number per factor is the mean cosine similarity of same-position vectors of
different tasks minus that of different-position vectors (0 = none).
Control (not in the paper): the same with a DIFFERENT initialisation per task
(seed + 1 + i), which separates "shared structure" from "memory of the init".

  # CPU (tiny quickstart base): 5 tasks x 2 inits x 100 steps, about 10 min
  python scripts/redundancy.py --root work_dirs/redundancy --steps 100 \
      --tasks task1146_country_capital task114_is_the_given_word_longest \
              task1321_country_continent task376_reverse_order_of_words task672_nummersense
  # analysis only (runs already trained)
  python scripts/redundancy.py --root work_dirs/redundancy --no_train

Writes ROOT/redundancy.json and ROOT/pca_<init>_<factor>.png. Expect lora_a
to cluster strongly by position with a shared init (the columns barely move
from it in a short run) and lora_b not to; the control tells whether the
lora_a clustering survives without the shared init.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mode_jax.experiments import backends  # noqa: E402
from mode_jax.experiments import points as points_lib  # noqa: E402
from mode_jax.experiments import presets  # noqa: E402
from mode_jax.experiments import redundancy  # noqa: E402

# The paper's case-study tasks present in the bundled sample.
DEFAULT_TASKS = ("task024_cosmosqa_answer_generation", "task089_swap_words_verification",
                 "task114_is_the_given_word_longest", "task141_odd-man-out_classification_category",
                 "task155_count_nouns_verbs", "task279_stereoset_classification_stereotype",
                 "task291_semeval_2020_task4_commonsense_validation",
                 "task622_replace_alphabets_in_a_list_by_their_position_in_english_alphabet",
                 "task672_nummersense", "task1711_poki_text_generation")
INITS = ("shared", "control")


def seqio_name(task: str) -> str:
  from mode_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  return tasks_lib.task_registry_name(task)


def make_jobs(args) -> dict[str, list[backends.Job]]:
  """{init: jobs}: one single-task LoRA per task, shared or per-task seed."""
  out = {}
  for init in INITS if args.control else INITS[:1]:
    jobs = []
    for i, task in enumerate(args.tasks):
      seed = args.seed if init == "shared" else args.seed + 1 + i
      pt = points_lib.Point("lora", args.rank, seed=seed, tag=task.split("_")[0],
                            bindings=(("MIXTURE_OR_TASK_NAME", seqio_name(task)),
                                      ("TRAIN_STEPS", args.steps)))
      jobs.append(backends.make_job(pt, os.path.join(args.root, init), args.gin_file,
                                    args.gin_bindings, args.base_checkpoint, args.targets))
    out[init] = jobs
  return out


def analyse(jobs: list[backends.Job], tasks) -> dict:
  """Clustering summary and the {task: {path: array}} adapter weights of the jobs."""
  from mode_jax.experiments import restore  # pylint: disable=g-import-not-at-top
  weights = {}
  for task, job in zip(tasks, jobs):
    cfg = restore.run_settings(job.model_dir)
    _, weights[task] = restore.adapter_weights(job.model_dir, cfg["model"], cfg["adapter"])
  return {"summary": redundancy.summarize(weights, tasks), "weights": weights}


def plot(weights, tasks, path: str, factor: str, layers, targets, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  mats = {k: v for k, v in redundancy.matrices(weights).items()
          if k[1] == factor and k[0][1] in layers and k[0][3] in targets}
  keys = sorted(mats, key=str)
  fig = plt.figure(figsize=(8, 3.6 * len(keys)))
  for i, key in enumerate(keys):
    v_trd = np.stack([redundancy.factor_vectors(mats[key][t], factor) for t in tasks])
    t, r, d = v_trd.shape
    xyz = redundancy.pca3(v_trd.reshape(t * r, d))
    pos = np.tile(np.arange(r), t)
    task_id = np.repeat(np.arange(t), r)
    for j, (c, name) in enumerate(((pos, "rank position"), (task_id, "task"))):
      ax = fig.add_subplot(len(keys), 2, 2 * i + j + 1, projection="3d")
      ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=c, cmap="tab10" if name == "task" else
                 "viridis", s=14)
      ax.set_title(f"{'/'.join(map(str, key[0][:4]))} {factor}: by {name}", fontsize=8)
      ax.tick_params(labelsize=5)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--root", required=True)
  ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="SNI task names")
  ap.add_argument("--rank", type=int, default=8)
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--seed", type=int, default=0, help="the shared initialisation")
  ap.add_argument("--targets", nargs="+", default=["q", "k", "v", "o"])
  ap.add_argument("--plot_layers", nargs="+", type=int, default=[1, 2])
  ap.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                  help="also train from a different initialisation per task")
  ap.add_argument("--gin_file", action="append", default=None)
  ap.add_argument("--gin_bindings", action="append", default=[])
  ap.add_argument("--base_checkpoint", default=None,
                  help="default: the quickstart base (with the default gin file)")
  ap.add_argument("--no_train", action="store_true", help="analyse existing runs only")
  args = ap.parse_args(argv)
  args.root = os.path.abspath(args.root)
  args.gin_file = args.gin_file or presets.CPU_GIN
  if not args.base_checkpoint and args.gin_file == presets.CPU_GIN:
    from mode_jax.experiments import base  # pylint: disable=g-import-not-at-top
    args.base_checkpoint = base.quickstart_base(build=not args.no_train)
  if len(args.tasks) < 2:
    ap.error("need at least 2 tasks")
  jobs = make_jobs(args)
  t0 = time.time()
  if not args.no_train:
    for init, js in jobs.items():
      res = backends.run_local(js, skip_eval=True, log=lambda s: print(s, flush=True))
      if any(r["status"] == "failed" for r in res):
        print(f"{init}: some runs failed; see their train.log", flush=True)
        return 1
  t_train = time.time() - t0
  report = {"tasks": args.tasks, "rank": args.rank, "steps": args.steps,
            "targets": args.targets, "train_seconds": t_train, "inits": {}}
  print("\n| init | factor | same-position cos | different-position cos | gap |")
  print("|---|---|---|---|---|")
  for init, js in jobs.items():
    out = analyse(js, args.tasks)
    report["inits"][init] = out["summary"]
    for factor, m in out["summary"]["mean"].items():
      print(f"| {init} | {factor} | {m['same_position']:.3f} | {m['different_position']:.3f} "
            f"| {m['gap']:.3f} |")
      path = os.path.join(args.root, f"pca_{init}_{factor}.png")
      plot(out["weights"], args.tasks, path, factor, args.plot_layers, args.targets,
           f"{init} init: {factor}, top-3 PCs, {len(args.tasks)} tasks, rank {args.rank}")
  with open(os.path.join(args.root, "redundancy.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(f"\nwrote {args.root}/redundancy.json and pca_*.png; training {t_train:.0f}s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
