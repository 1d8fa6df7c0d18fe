"""Paired bootstrap, two-sided sign test and all-pairs comparisons, on hand-checkable cases."""

import math

import numpy as np
import pytest

from mode_jax.experiments import stats


def test_constant_difference_has_a_degenerate_interval():
  a = np.array([[3.0, 5.0, 7.0, 11.0]])
  res = stats.paired_bootstrap(a, a - 2.5, num_resamples=2000)
  assert res["mean_diff"] == pytest.approx(2.5)
  assert res["ci_low"] == pytest.approx(2.5) and res["ci_high"] == pytest.approx(2.5)


def test_two_instances_by_hand():
  # diffs {0, 2}: a resample's mean is 0, 1, 2 with probability 1/4, 1/2, 1/4.
  a, b = np.array([[10.0, 12.0]]), np.array([[10.0, 10.0]])
  res = stats.paired_bootstrap(a, b, num_resamples=4000)
  assert res["mean_diff"] == 1.0
  assert (res["ci_low"], res["ci_high"]) == (0.0, 2.0)
  narrow = stats.paired_bootstrap(a, b, num_resamples=4000, level=0.4)  # 30% and 70% points
  assert (narrow["ci_low"], narrow["ci_high"]) == (1.0, 1.0)


def test_resampling_seeds_adds_the_seed_spread():
  # Seed 0 scores 0 everywhere, seed 1 scores 2: averaged, every instance is 1.
  a, b = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]), np.zeros((1, 3))
  avg = stats.paired_bootstrap(a, b, num_resamples=2000, resample_seeds=False)
  assert (avg["ci_low"], avg["ci_high"]) == (1.0, 1.0)
  both = stats.paired_bootstrap(a, b, num_resamples=2000, resample_seeds=True)
  assert both["mean_diff"] == 1.0 and (both["ci_low"], both["ci_high"]) == (0.0, 2.0)


def test_interval_width_matches_the_normal_approximation_and_is_seeded():
  rng = np.random.default_rng(1)
  d = rng.normal(0.5, 2.0, size=400)
  res = stats.paired_bootstrap(d[None], np.zeros((1, 400)), num_resamples=4000, seed=3)
  se = d.std() / math.sqrt(len(d))
  assert res["ci_high"] - res["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.1)
  assert stats.paired_bootstrap(d[None], np.zeros((1, 400)), num_resamples=4000,
                                seed=3) == res


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match="same N"):
    stats.paired_bootstrap(np.zeros((2, 3)), np.zeros((2, 4)))


def test_two_sided_sign_test_by_hand():
  assert stats.sign_test_two_sided(9, 10) == pytest.approx(2 * 11 / 1024)
  assert stats.sign_test_two_sided(1, 10) == pytest.approx(2 * 11 / 1024)
  assert stats.sign_test_two_sided(5, 10) == 1.0
  assert math.isnan(stats.sign_test_two_sided(0, 0))


def test_compare_methods_pairs_instances_by_key_and_averages_seeds():
  # Task t1: A beats B; t2: A loses; t3: tie. Instance ("t3", "x") is missing
  # from one of A's seeds, so it is dropped everywhere.
  a0 = {("t1", "1"): 50.0, ("t1", "2"): 70.0, ("t2", "1"): 10.0, ("t3", "1"): 5.0,
        ("t3", "x"): 99.0}
  a1 = {("t1", "1"): 30.0, ("t1", "2"): 50.0, ("t2", "1"): 30.0, ("t3", "1"): 5.0}
  b0 = {("t1", "1"): 20.0, ("t1", "2"): 40.0, ("t2", "1"): 40.0, ("t3", "1"): 5.0,
        ("t3", "x"): 0.0}
  res = stats.compare_methods([a0, a1], [b0], num_resamples=500)
  assert res["n_instances"] == 4 and res["n_tasks"] == 3
  # seed means of A: t1 40, 60; t2 20; t3 5. diffs vs B: 20, 20, -20, 0.
  assert res["mean_diff"] == pytest.approx(5.0)
  assert (res["wins"], res["losses"], res["ties"]) == (1, 1, 1)
  assert res["win_rate"] == 0.5 and res["p_two_sided"] == 1.0


def test_all_pairs_order():
  runs = {"x": [{("t", "1"): 1.0}], "y": [{("t", "1"): 2.0}], "z": [{("t", "1"): 3.0}]}
  out = stats.all_pairs(runs, num_resamples=100)
  assert [(r["a"], r["b"]) for r in out] == [("x", "y"), ("x", "z"), ("y", "z")]
  assert [r["mean_diff"] for r in out] == [-1.0, -2.0, -1.0]
