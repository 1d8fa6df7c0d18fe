"""Quickstart wiring: the disjoint base's data and cache key, and its quiet logging."""

import logging

from mode_jax import launch
from mode_jax import quickstart
from mode_jax.experiments import base as base_lib


def test_base_is_keyed_by_its_own_disjoint_data():
  launch.parse_gin([quickstart.DEFAULT_GIN], ["MODEL_DIR = 'unused'"])
  assert base_lib.base_sni_dir() == "data/sni_full_sample/base"
  assert launch.query("train.sni_dir") == "data/sni_full_sample/adapters"
  disjoint = base_lib.prepared_base(300, build=False)
  assert disjoint.startswith(base_lib.CACHE)
  assert base_lib.prepared_base(301, build=False) != disjoint
  # Without BASE_SNI_DIR the base is trained on SNI_DIR's tasks: another key.
  launch.parse_gin([quickstart.DEFAULT_GIN], ["MODEL_DIR = 'unused'",
                                              "BASE_SNI_DIR = None"])
  assert base_lib.base_sni_dir() == "data/sni_full_sample/adapters"
  assert base_lib.prepared_base(300, build=False) != disjoint


def test_partial_copy_warnings_are_dropped_and_others_kept(caplog):
  quiet = base_lib.Quiet(quickstart._PARTIAL_COPY)  # pylint: disable=protected-access
  logging.getLogger().addFilter(quiet)
  try:
    with caplog.at_level(logging.WARNING):
      logging.warning("SNI: %d of %d requested tasks are missing from %s (allow_missing): %s",
                      703, 756, "data/x", "task001")
      logging.warning("SNI: registered %d tasks; %d requested tasks missing (allow_missing)",
                      37, 720)
      logging.warning("SNI: skipping bad instance: %s", "bad")
  finally:
    logging.getLogger().removeFilter(quiet)
  assert [r.getMessage() for r in caplog.records] == ["SNI: skipping bad instance: bad"]
