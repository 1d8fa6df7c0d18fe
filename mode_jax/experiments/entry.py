"""Runs a library entry point by name: `python -m mode_jax.experiments.entry train --gin_file=...`.

Why not `python -m mode_jax.train`: run as `__main__`, that module registers
its `train` configurable as `__main__.train`, and `launch.parse_gin` then
imports `mode_jax.train` again, so gin sees two `train`s and fails with
"Ambiguous selector 'train'". Importing the module normally avoids it; the
flags are exactly those of the entry point (`--gin_file`, `--gin_bindings`,
`--multihost`).
"""

from __future__ import annotations

import importlib
import sys

ENTRY_POINTS = {"train": ("mode_jax.train", "train"), "eval": ("mode_jax.eval", "evaluate"),
                "infer": ("mode_jax.infer", "infer"), "export": ("mode_jax.export", "export")}


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] not in ENTRY_POINTS:
    raise SystemExit(f"usage: entry {{{','.join(ENTRY_POINTS)}}} --gin_file=... "
                     "[--gin_bindings=...]")
  from mode_jax import launch  # pylint: disable=g-import-not-at-top
  module, fn = ENTRY_POINTS[argv[0]]
  launch.parse_and_run(getattr(importlib.import_module(module), fn), argv[1:])


if __name__ == "__main__":
  main()
