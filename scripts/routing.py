"""Router weights of a trained mixture adapter, per task and adapted matrix.

  python scripts/routing.py work_dirs/cpu_compare/mode_m8_R4_p1_s0
  python scripts/routing.py RUN --tasks task1146_country_capital task672_nummersense \
      --max_examples 4 --out /tmp/routing

Runs the run's model (base + restored adapters, settings from point.json) on
each task's evaluation prompts, unpadded, one at a time (jitted), pops the
statistics the adapters sow (`mode_jax.adapters.routing.pop`, per matrix
and layer with `routing.by_matrix`), and averages per task the gate load
(mean softmax weight per expert over tokens and groups) and router entropy
of every adapted matrix. For rank top-k kinds (flylora, smora), the load is
the share of selections per rank column (their recorded `counts`).

Writes OUT/routing.json, routing_load.png (one heat map tasks x experts per
adapted matrix) and routing_entropy.png (mean entropy per layer and matrix,
with log(E), the entropy of uniform gates). Prints the per-layer entropy
and a task-specialisation number: the mean total-variation distance between
each task's load and the all-task mean load (0: every task routes alike).
CPU, tiny base: about 1 minute for the 20 sample tasks at 8 prompts each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mode_jax import files  # noqa: E402


def make_forward(model):
  """tokens [1, L] -> routing stats of one unpadded prompt (padding would enter
  the gate means); jitted, so it compiles once per distinct prompt length."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from mode_jax.adapters import routing  # pylint: disable=g-import-not-at-top
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, tokens):
    model = nnx.merge(graphdef, state)
    model(tokens)
    stats = routing.by_matrix(routing.pop(model))  # per matrix and layer, either layout
    return {n: {k: v for k, v in s.items() if k in ("load", "entropy", "counts")}
            for n, s in stats.items()}

  return lambda input_ids: forward(state, jnp.asarray([[0] + list(input_ids)], jnp.int32))


def task_routing(forward, examples) -> dict[str, dict]:
  """{adapter name: {"load": [E], "entropy": float}} averaged over the examples."""
  acc: dict[str, dict] = {}
  for ex in examples:
    stats = forward(ex.input_ids)
    for name, s in stats.items():
      load = s.get("load")
      if load is None and "counts" in s:
        c = np.asarray(s["counts"], np.float64)
        load = c / max(c.sum(), 1e-12)
      if load is None:
        continue
      a = acc.setdefault(name, {"load": [], "entropy": []})
      a["load"].append(np.asarray(load, np.float64))
      if "entropy" in s:
        a["entropy"].append(float(s["entropy"]))
  return {n: {"load": np.mean(a["load"], axis=0).tolist(),
              "entropy": float(np.mean(a["entropy"])) if a["entropy"] else float("nan")}
          for n, a in acc.items()}


def specialisation(per_task: dict[str, dict]) -> dict[str, float]:
  """Per adapter: mean total-variation distance of task loads from their mean."""
  names = next(iter(per_task.values())).keys()
  out = {}
  for n in names:
    loads = np.array([per_task[t][n]["load"] for t in per_task])
    out[n] = float(0.5 * np.abs(loads - loads.mean(0)).sum(-1).mean())
  return out


def plot(per_task: dict, out_dir: str) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks = list(per_task)
  names = sorted(next(iter(per_task.values())), key=_layer_key)
  cols = 4
  rows = math.ceil(len(names) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, (0.15 * len(tasks) + 1.5) * rows),
                           squeeze=False)
  for ax, n in zip(axes.flat, names):
    m = np.array([per_task[t][n]["load"] for t in tasks])
    im = ax.imshow(m, aspect="auto", cmap="magma")
    ax.set_title(n, fontsize=8)
    ax.set_yticks(range(len(tasks)), [t.split("_")[0] for t in tasks], fontsize=5)
    ax.set_xticks(range(m.shape[1]))
    ax.tick_params(axis="x", labelsize=6)
    ax.set_xlabel("expert", fontsize=7)
    fig.colorbar(im, ax=ax)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.suptitle("mean router weight per task (rows) and expert (columns)")
  fig.tight_layout(rect=(0, 0, 1, 0.98))
  load_png = os.path.join(out_dir, "routing_load.png")
  fig.savefig(load_png, dpi=100)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  by_matrix: dict[str, dict[int, float]] = {}
  for n in names:
    layer, mat = _layer_key(n)
    by_matrix.setdefault(mat, {})[layer] = float(np.nanmean(
        [per_task[t][n]["entropy"] for t in tasks]))
  for mat, d in sorted(by_matrix.items()):
    xs = sorted(d)
    ax.plot(xs, [d[x] for x in xs], "o-", label=mat)
  e = len(per_task[tasks[0]][names[0]]["load"])
  ax.axhline(math.log(e), ls="--", c="gray", label=f"uniform, log({e})")
  ax.set_xticks(sorted({x for d in by_matrix.values() for x in d}))
  ax.set_xlabel("layer")
  ax.set_ylabel("router entropy (nats)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  ent_png = os.path.join(out_dir, "routing_entropy.png")
  fig.savefig(ent_png, dpi=100)
  plt.close(fig)
  return [load_png, ent_png]


def _layer_key(name: str):
  parts = name.split("/")
  layer = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
  return layer, "/".join(parts[2:]) or name


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("run", help="run directory made by scripts/sweep.py (has point.json)")
  ap.add_argument("--tasks", nargs="+", default=None,
                  help="SNI tasks (default: the run's evaluate.tasks or the train split)")
  ap.add_argument("--max_examples", type=int, default=8, help="prompts per task")
  ap.add_argument("--out", default=None, help="default: RUN/routing")
  args = ap.parse_args(argv)
  from mode_jax import launch  # pylint: disable=g-import-not-at-top
  from mode_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from mode_jax.experiments import restore  # pylint: disable=g-import-not-at-top
  settings = restore.run_settings(args.run)
  names = args.tasks
  if names is None:
    names = launch.query("evaluate.tasks") if _bound("evaluate.tasks") else None
  model, s = restore.trained_model(args.run, settings)
  if s["adapter"] is None or s["adapter"].kind == "lora":
    raise SystemExit(f"{args.run}: adapter {s['adapter']} has no router")
  if names is None:
    names = tasks_lib.register_sni(s["sni_dir"], s["sni"], vocab_path=s["vocab_path"],
                                   allow_missing=True, case_study=False, test=False).sni_tasks
  out_dir = args.out or files.join(args.run, "routing")
  local_dir = tempfile.mkdtemp() if files.is_remote(out_dir) else out_dir
  os.makedirs(local_dir, exist_ok=True)
  per_task = {}
  forward = make_forward(model)
  for task in names:
    exs = tasks_lib.eval_examples(s["sni_dir"], [task], s["sni"], vocab_path=s["vocab_path"],
                                  allow_missing=True)[:args.max_examples]
    if exs:
      per_task[task] = task_routing(forward, exs)
  if not per_task:
    raise SystemExit("no evaluation examples found")
  spec = specialisation(per_task)
  pngs = plot(per_task, local_dir)
  with open(os.path.join(local_dir, "routing.json"), "w") as f:
    json.dump({"per_task": per_task, "specialisation": spec}, f, indent=2)
  if local_dir != out_dir:  # a bucket: matplotlib and json write locally, then upload
    for name in ("routing.json",) + tuple(os.path.basename(p) for p in pngs):
      files.copy(os.path.join(local_dir, name), files.join(out_dir, name))
    shutil.rmtree(local_dir)
    pngs = [files.join(out_dir, os.path.basename(p)) for p in pngs]
  print("| adapted matrix | mean entropy | specialisation (TV) |\n|---|---|---|")
  first = next(iter(per_task.values()))
  for n in sorted(first, key=_layer_key):
    ent = np.nanmean([per_task[t][n]["entropy"] for t in per_task])
    print(f"| {n} | {ent:.3f} | {spec[n]:.3f} |")
  e = len(first[next(iter(first))]["load"])
  print(f"\nuniform entropy log({e}) = {math.log(e):.3f}; mean specialisation "
        f"{np.mean(list(spec.values())):.3f}; {len(per_task)} tasks")
  print("wrote", files.join(out_dir, "routing.json"), *pngs)
  return 0


def _bound(name: str) -> bool:
  import gin  # pylint: disable=g-import-not-at-top
  try:
    gin.query_parameter(name)
    return True
  except ValueError:
    return False


if __name__ == "__main__":
  sys.exit(main())
