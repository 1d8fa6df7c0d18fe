"""The micro-batch loop re-gathers the frozen base in each iteration (issue 11).

Without the optimization barrier in `trainer.make_train_step`, XLA hoists the
FSDP all-gathers of the frozen base out of the gradient-accumulation loop,
so every gathered base weight is held for the whole step.
"""

import re

import jax
import numpy as np

from mode_jax import adapters
from mode_jax import models
from mode_jax import optim
from mode_jax import sharding
from mode_jax import trainer


def _gathers_in_micro_batch_loop(monkeypatch, barrier: bool) -> tuple[int, int]:
  """(all-gathers inside the micro-batch loop, all of them) of a compiled FSDP step."""
  monkeypatch.setattr(trainer, "_GATHER_BASE_PER_MICRO_BATCH", barrier)
  cfg = models.get_config("tiny")
  graphdef, params, astate, frozen = trainer.split_model(
      models.abstract_model(cfg, adapters.AdapterConfig(kind="lora", rank=4)))
  tx, sched = optim.make_optimizer(optim.OptimizerConfig(), 10)
  state = jax.eval_shape(lambda p, a: trainer.init_state(p, a, tx), params, astate)
  batch = {k: jax.ShapeDtypeStruct((16, 32), np.float32 if "weights" in k else np.int32)
           for k in trainer.BATCH_KEYS}
  mesh = sharding.make_mesh(data=1, fsdp=8)
  with sharding.use_mesh(mesh):
    step = trainer.jit_train_step(trainer.make_train_step(graphdef, tx, sched, micro_batches=2),
                                  state, frozen, batch, mesh)
    text = step.lower(state, frozen, batch).compile().as_text()
  computations, name = {}, None
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      name = head.group(1)
      computations[name] = []
    elif name:
      computations[name].append(line)
  gather = re.compile(r"\ball-gather(-start)?\(")
  bodies = set(re.findall(r"body=%?([\w.\-]+)", text))
  assert bodies, "no loop in the compiled step"
  inside = sum(bool(gather.search(l)) for b in bodies for l in computations[b])
  return inside, sum(bool(gather.search(l)) for l in text.splitlines())


def test_micro_batch_loop_gathers_the_frozen_base_inside_the_loop(monkeypatch):
  """FSDP: the base's all-gathers stay in the micro-batch loop, one weight at a
  time, rather than all held for the whole step (issue 11). Without the
  optimization barrier XLA hoists them out of the loop (compiled for the
  CPU here; benchmarks/aot_gather_barrier.py measures the TPU compile)."""
  inside, total = _gathers_in_micro_batch_loop(monkeypatch, barrier=True)
  assert inside > total / 2, (inside, total)
  hoisted_inside, _ = _gathers_in_micro_batch_loop(monkeypatch, barrier=False)
  assert hoisted_inside < inside / 4, (hoisted_inside, inside)
