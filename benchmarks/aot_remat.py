"""Per-chip HBM and FLOPs of the paper run's train step under each remat policy.

Run (a CPU machine with libtpu: pip install -r requirements-tpu.txt; minutes
of one core per row, one compile after another):

    nice python benchmarks/aot_remat.py [--rows scanned_full_mb4 ...] [--out FILE]

Each row compiles `experiments/main_mode16x4.gin` (Gemma 2B + MoDE 16x4,
batch 128 x 1024, FSDP over 32 chips) for the v5e-32 its header names with
`python -m mode_jax.aot --no_decode` and the row's bindings of the model's
layout (`scan_layers`), rematerialisation (`remat_policy`) and
`train.micro_batches`. The compiler's cost analysis counts a loop body once
(one micro-batch, and one layer of a scanned stack), so its FLOPs compare
rows of the same layout and micro-batches only (README, "Scan and remat",
gives the whole-step arithmetic). Wall seconds and the machine's load
average at the start of each compile are printed beside, so that compile
times from a shared machine can be read for what they are.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import aot_configs  # noqa: E402  (the same runner and parser as the config table)

CONFIG = os.path.join(aot_configs.REPO, "configs", "experiments", "main_mode16x4.gin")
# name -> (scan_layers, remat_policy, micro_batches)
ROWS = {
    "looped_none_mb4": (False, "none", 4),
    "scanned_none_mb4": (True, "none", 4),
    "scanned_full_mb4": (True, "full", 4),
    "scanned_save_dots_mb4": (True, "save_dots", 4),
    "scanned_save_all_dots_mb4": (True, "save_all_dots", 4),
    "scanned_full_mb1": (True, "full", 1),
    "scanned_save_dots_mb1": (True, "save_dots", 1),
    "scanned_none_mb1": (True, "none", 1),
    "scanned_save_all_dots_mb1": (True, "save_all_dots", 1),
    "scanned_full_mb2": (True, "full", 2),
    "scanned_save_dots_mb2": (True, "save_dots", 2),
}


def bindings(scan: bool, remat: str, micro: int) -> list[str]:
  return [f"--gin_bindings=models.named_config.scan_layers = {scan}",
          f"--gin_bindings=models.named_config.remat_policy = '{remat}'",
          f"--gin_bindings=train.micro_batches = {micro}"]


def run_row(name: str) -> dict:
  scan, remat, micro = ROWS[name]
  load = os.getloadavg()[0]
  t0 = time.time()
  row = aot_configs.compile_config(CONFIG, 0.1, ["--no_decode", *bindings(scan, remat, micro)])
  row.update(name=name, scan=scan, remat=remat, micro=micro, wall_s=time.time() - t0, load=load)
  return row


def table(rows) -> str:
  lines = ["| layers | remat | micro-batches | train step HBM / chip (of 15.75 GiB) | "
           "FLOPs / chip (compiler, each loop body once) | compile s (wall s, load avg) |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    step = r["steps"][0] if r["steps"] else ("train step", "failed", "", "", "")
    _, verdict, gib, _, free = step
    hbm = f"{gib} GiB ({free}% free)" if gib else verdict
    detail = next((l.strip() for l in r["output"].splitlines() if l.strip().startswith(
        "arguments")), "")
    if detail:
      hbm += ": " + detail.split(", outputs")[0].replace(" GiB", "")
    flops = f"{r['flops']:.3g}" if r["flops"] else "-"
    secs = ", ".join(f"{s:.0f}" for s in r["compile_s"]) or "-"
    lines.append(f"| {'scanned' if r['scan'] else 'looped'} | {r['remat']} | {r['micro']} | "
                 f"{hbm} | {flops} | {secs} ({r['wall_s']:.0f}, {r['load']:.1f}) |")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=sorted(ROWS))
  ap.add_argument("--out", default=None, help="also write the table here")
  args = ap.parse_args(argv)
  rows = []
  for name in args.rows:
    rows.append(run_row(name))
    r = rows[-1]
    print(f"== {name}: rc {r['rc']}, wall {r['wall_s']:.0f}s, load {r['load']:.1f}", flush=True)
    print(r["output"], flush=True)
    if r["rc"] not in (0, 1):
      print(r["stderr"], file=sys.stderr, flush=True)
    text = table(rows)
    if args.out:
      with open(args.out, "w") as f:
        f.write(text + "\n")
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
