"""Deterministic per-instance train / validation / test splits of a task.

Each instance is placed by hashing (seed, task name, instance id), never by
a global random generator, so adding or removing tasks (or other instances)
does not move any instance. Caps keep the instances with the smallest hash,
a seeded pseudo-random subset that is also stable; the kept instances stay in
file order. "test" is the first `max_test_per_task` instances in file order,
as the official SNI evaluation of test-split tasks.

Pure Python (no TensorFlow).
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")


def instance_hash(seed: int, task: str, instance_id: str) -> float:
  """Uniform value in [0, 1) from sha256 of (seed, task, id)."""
  digest = hashlib.sha256(f"{seed}\x1f{task}\x1f{instance_id}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def is_eval(seed: int, task: str, instance_id: str, eval_fraction: float) -> bool:
  """True when the instance belongs to "validation"."""
  return instance_hash(seed, task, instance_id) < eval_fraction


def _cap(instances, keys, cap):
  if cap is None or len(instances) <= cap:
    return list(instances)
  keep = set(sorted(range(len(instances)), key=keys.__getitem__)[:cap])
  return [x for i, x in enumerate(instances) if i in keep]


def split_instances(task, cfg) -> dict[str, list]:
  """Splits `task.instances` into SPLITS.

  Args:
    task: a `TaskRecord`.
    cfg: an `SniConfig` (seed, eval_fraction, caps).

  Returns:
    {"train": [...], "validation": [...], "test": [...]} of `Instance`s.
  """
  keys = [instance_hash(cfg.seed, task.name, x.id) for x in task.instances]
  train = [(x, k) for x, k in zip(task.instances, keys) if k >= cfg.eval_fraction]
  evals = [(x, k) for x, k in zip(task.instances, keys) if k < cfg.eval_fraction]
  test = list(task.instances)
  if cfg.max_test_per_task is not None:
    test = test[:cfg.max_test_per_task]
  return {
      "train": _cap([x for x, _ in train], [k for _, k in train], cfg.max_train_per_task),
      "validation": _cap([x for x, _ in evals], [k for _, k in evals], cfg.max_eval_per_task),
      "test": test,
  }


def cap_instances(instances, seed: int, task: str, cap: int | None) -> list:
  """At most `cap` of `instances`: those of smallest `instance_hash`, in their order.

  The choice depends on (seed, task, id) only, not on the file order or on
  the other tasks, so every process and every run keeps the same instances.
  """
  return _cap(instances, [instance_hash(seed, task, x.id) for x in instances], cap)


def choose_target(seed: int, task: str, instance) -> str:
  """The training reference: one of the outputs, chosen by a seeded hash."""
  if len(instance.outputs) == 1:
    return instance.outputs[0]
  h = instance_hash(seed + 1, task, instance.id)
  return instance.outputs[int(h * len(instance.outputs))]
