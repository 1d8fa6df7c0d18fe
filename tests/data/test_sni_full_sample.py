"""data/sni_full_sample: the whole SNI sample, split into a base root and an adapters root."""

import collections
import filecmp
import json
import os

from mode_jax.data import sni

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data")
FULL = os.path.join(DATA, "sni_full_sample")
BASE, ADAPTERS = os.path.join(FULL, "base"), os.path.join(FULL, "adapters")


def _tasks(root):
  return sorted(f[:-5] for f in os.listdir(os.path.join(root, "tasks")))


def test_roots_are_disjoint_and_hold_the_whole_sample():
  base, adapters = _tasks(BASE), _tasks(ADAPTERS)
  assert not set(base) & set(adapters)
  train, test = set(sni.read_split(BASE, "train")), set(sni.read_split(BASE, "test"))
  assert len(base) == 26 and set(base) <= train
  assert len([t for t in adapters if t in train]) == 27
  assert len([t for t in adapters if t in test]) == 10
  n = sum(len(json.load(open(sni.task_path(r, t)))["Instances"])
          for r in (BASE, ADAPTERS) for t in _tasks(r))
  assert n == 3304 + 596  # the sample README's counts
  for split in ("train", "test", "excluded"):  # verbatim, in both roots
    name = os.path.join("splits", "default", f"{split}_tasks.txt")
    assert filecmp.cmp(os.path.join(BASE, name), os.path.join(ADAPTERS, name), shallow=False)
    assert filecmp.cmp(os.path.join(BASE, name), os.path.join(DATA, "sni_sample", name),
                       shallow=False)


def test_the_documented_assignment_rule_reproduces_the_split():
  # Categories by size (desc) then name, tasks by name; alternate, adapters first.
  train = set(sni.read_split(BASE, "train"))
  by_cat = collections.defaultdict(list)
  for root in (BASE, ADAPTERS):
    for t in _tasks(root):
      if t in train:
        by_cat[sni.read_header(sni.task_path(root, t))["Categories"][0]].append(t)
  order = [t for c in sorted(by_cat, key=lambda c: (-len(by_cat[c]), c))
           for t in sorted(by_cat[c])]
  assert order[0::2] == [t for t in order if t in set(_tasks(ADAPTERS))]
  assert order[1::2] == [t for t in order if t in set(_tasks(BASE))]


def test_readme_keeps_the_licence_note():
  text = open(os.path.join(FULL, "README.md")).read()
  assert "Apache-2.0" in text and "## Licences" in text and "Instance License" in text
