"""Per-instance deterministic splits."""

import dataclasses
import os

from mode_jax.data import config
from mode_jax.data import sni
from mode_jax.data import splits

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")
TASK = sni.read_task(os.path.join(SAMPLE, "tasks", "task1146_country_capital.json"))


def ids(instances):
  return [i.id for i in instances]


def test_deterministic_and_disjoint():
  cfg = config.SniConfig()
  a, b = splits.split_instances(TASK, cfg), splits.split_instances(TASK, cfg)
  assert {k: ids(v) for k, v in a.items()} == {k: ids(v) for k, v in b.items()}
  train, val = set(ids(a["train"])), set(ids(a["validation"]))
  assert not train & val
  assert train | val == set(ids(TASK.instances))
  assert 0 < len(val) < 0.25 * len(TASK.instances)
  assert ids(a["test"]) == ids(TASK.instances)  # 79 < 100: all, in file order.


def test_seed_changes_split_and_fraction_is_close():
  n_val = 0
  n_all = 0
  for name in os.listdir(os.path.join(SAMPLE, "tasks")):
    task = sni.read_task(os.path.join(SAMPLE, "tasks", name))
    n_val += len(splits.split_instances(task, config.SniConfig())["validation"])
    n_all += len(task.instances)
  assert 0.07 < n_val / n_all < 0.13
  other = splits.split_instances(TASK, config.SniConfig(seed=1))["validation"]
  assert ids(other) != ids(splits.split_instances(TASK, config.SniConfig())["validation"])


def test_stable_under_removal_of_instances():
  cfg = config.SniConfig()
  full = set(ids(splits.split_instances(TASK, cfg)["validation"]))
  half = dataclasses.replace(TASK, instances=TASK.instances[::2])
  part = set(ids(splits.split_instances(half, cfg)["validation"]))
  assert part == full & set(ids(half.instances))


def test_caps():
  cfg = config.SniConfig(max_train_per_task=10, max_eval_per_task=2, max_test_per_task=5)
  s = splits.split_instances(TASK, cfg)
  assert len(s["train"]) == 10 and len(s["validation"]) == 2
  assert ids(s["test"]) == ids(TASK.instances[:5])
  uncapped = splits.split_instances(TASK, config.SniConfig())
  assert set(ids(s["train"])) <= set(ids(uncapped["train"]))
  order = ids(TASK.instances)
  assert ids(s["train"]) == sorted(ids(s["train"]), key=order.index)


def test_choose_target_is_a_reference_and_deterministic():
  task = sni.read_task(os.path.join(SAMPLE, "tasks",
                                    "task111_asset_sentence_simplification.json"))
  picks = [splits.choose_target(0, task.name, i) for i in task.instances]
  assert picks == [splits.choose_target(0, task.name, i) for i in task.instances]
  assert all(p in i.outputs for p, i in zip(picks, task.instances))
  assert len({i.outputs.index(p) for p, i in zip(picks, task.instances)}) > 1
