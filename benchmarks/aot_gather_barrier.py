"""What re-gathering the frozen base in each micro-batch saves, on the TPU compile.

    nice python benchmarks/aot_gather_barrier.py              # barrier off
    nice python benchmarks/aot_gather_barrier.py --barrier    # as shipped
    ... --layout scanned_save_dots_mb4                        # the paper layout, 4 micro-batches

Compiles the train step of `experiments/main_mode16x4.gin` for its v5e-32
with `python -m mode_jax.aot --no_decode` in the layout where the micro-batch
loop matters: looped layers, no remat, 4 micro-batches (everything else as
shipped: bfloat16 base, loss in 256-position chunks). Without `--barrier` the
private switch `trainer._GATHER_BASE_PER_MICRO_BATCH` is off, so XLA may
hoist the base's FSDP all-gathers out of the loop (tests/
test_micro_batch_gathers.py shows that it does on XLA:CPU). The difference in
HBM per chip is the barrier's own share.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mode_jax import aot  # noqa: E402
from mode_jax import trainer  # noqa: E402

LAYOUTS = {
    "looped_none_mb4": ("models.named_config.scan_layers = False",
                        "models.named_config.remat_policy = 'none'", "train.micro_batches = 4"),
    # The shipped layout (scanned, save_dots) with 4 micro-batches instead of 1.
    "scanned_save_dots_mb4": ("train.micro_batches = 4",),
}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--barrier", action="store_true", help="keep the barrier (as shipped)")
  ap.add_argument("--layout", default="looped_none_mb4", choices=sorted(LAYOUTS))
  args = ap.parse_args(argv)
  trainer._GATHER_BASE_PER_MICRO_BATCH = args.barrier  # pylint: disable=protected-access
  print(f"base gathers per micro-batch (optimization barrier): {args.barrier}", flush=True)
  return aot.main(["--gin_file=experiments/main_mode16x4.gin", "--topology=v5e-32",
                   "--headroom=0.1", "--no_decode"] + [f"--gin_bindings={b}" for b in LAYOUTS[args.layout]])


if __name__ == "__main__":
  sys.exit(main())
