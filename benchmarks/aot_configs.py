"""Compile every paper-scale config for the TPU topology its header names.

Run (a CPU machine with libtpu: pip install -r requirements-tpu.txt; about
2 minutes of one core per step compiled, one config after another):

    nice python benchmarks/aot_configs.py [--out benchmarks/aot_configs.md]

Each config's header has a line `# Topology: v5e-32`; the script runs
`python -m mode_jax.aot --gin_file=<config> --topology=<it> --headroom=0.1`
(plus the config's `# AOT flags:` if any, e.g. the sweep's adapter) and tabulates, per chip, the HBM
needed by the train step and by the decoding step, the compiler's FLOPs per
train step and the compile seconds. A config that does not fit with 10% of
HBM to spare makes the script exit 1. The table goes into README.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The sweep presets' shared file plus an adapter is exactly a main_*.gin
# (tests/test_configs.py), so the main-table files cover it.
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "experiments", "main_*.gin")))


def header_value(path: str, key: str) -> str | None:
  """`# <key>: value` from the gin file's header comments, or None."""
  for line in open(path):
    if not line.startswith("#"):
      break
    m = re.match(rf"#\s*{key}:\s*(.+?)\s*$", line)
    if m:
      return m.group(1)
  return None


def compile_config(path: str, headroom: float, extra=()) -> dict:
  """Runs mode_jax.aot on one config; returns its parsed numbers and output."""
  topology = header_value(path, "Topology")
  if topology is None:
    raise SystemExit(f"{path}: no '# Topology: ...' line in its header")
  rel = os.path.relpath(path, os.path.join(REPO, "configs"))
  flags = shlex.split(header_value(path, "AOT flags") or "")
  argv = [sys.executable, "-m", "mode_jax.aot", f"--gin_file={rel}", *flags,
          f"--topology={topology}", f"--headroom={headroom}", *extra]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
  out = proc.stdout
  row = {"config": rel, "topology": topology, "rc": proc.returncode, "output": out,
         "stderr": proc.stderr[-2000:]}
  steps = re.findall(r"^(train step|train eval|eval)[^:]*: (fits|DOES NOT FIT)(?:: ([\d.]+) GiB "
                     r"of ([\d.]+) GiB HBM per chip \((-?\d+)% free\))?", out, re.M)
  row["steps"] = steps
  flops = re.search(r"per chip: ([\d.e+]+) FLOPs", out)
  row["flops"] = float(flops.group(1)) if flops else None
  row["compile_s"] = [float(s) for s in re.findall(r"compile (\d+)s", out)]
  return row


def table(rows) -> str:
  lines = ["| config | topology | train step HBM / chip | decode step HBM / chip | "
           "FLOPs / step / chip (compiler) | compile s (train, decode) |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    cells = {}
    for name, verdict, gib, cap, free in r["steps"]:
      key = "train" if name == "train step" else "decode"
      text = f"{gib} of {cap} GiB ({free}% free)" if gib else verdict
      cells[key] = cells.get(key, "") + ("; " if key in cells else "") + text
    flops = f"{r['flops']:.3g}" if r["flops"] else "-"
    secs = ", ".join(f"{s:.0f}" for s in r["compile_s"]) or "-"
    lines.append(f"| {r['config']} | {r['topology']} | {cells.get('train', 'failed')} | "
                 f"{cells.get('decode', '-')} | {flops} | {secs} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--headroom", type=float, default=0.1)
  ap.add_argument("--configs", nargs="*", default=None, help="default: every paper config")
  ap.add_argument("--out", default=None, help="also write the table here")
  args = ap.parse_args(argv)
  rows = []
  for path in args.configs or CONFIGS:
    row = compile_config(os.path.abspath(path), args.headroom)
    print(row["output"], flush=True)
    if row["rc"] not in (0, 1):
      print(row["stderr"], file=sys.stderr, flush=True)
    rows.append(row)
  text = table(rows)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
