"""compare.py: task-level win rate and the one-sided binomial sign test."""

import math

import pytest

from mode_jax.experiments import stats
from tests.scripts.conftest import fake_run

A = {"t1": 50.0, "t2": 60.0, "t3": 10.0, "t4": 33.0, "t5": 80.0, "t6": 20.0, "t7": 70.0,
     "t8": 40.0, "t9": 15.0, "t10": 25.0}
B = {"t1": 40.0, "t2": 55.0, "t3": 10.0, "t4": 30.0, "t5": 70.0, "t6": 25.0, "t7": 60.0,
     "t8": 39.0, "t9": 16.0, "t10": 20.0}


def test_win_rate_and_exact_p_value_by_hand():
  res = stats.win_rate(A, B)
  # wins t1 t2 t4 t5 t7 t8 t10, losses t6 t9, tie t3 (dropped)
  assert (res["wins"], res["losses"], res["ties"], res["n"]) == (7, 2, 1, 9)
  assert res["win_rate"] == pytest.approx(7 / 9)
  # P(X >= 7), X ~ Bin(9, 1/2) = (C(9,7) + C(9,8) + C(9,9)) / 2^9 = 46 / 512
  assert res["p_value"] == pytest.approx(46 / 512, abs=1e-15)


def test_binom_tail_matches_direct_sum_and_scipy():
  for n in range(0, 25):
    for k in range(0, n + 2):
      direct = sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n if k <= n else 0.0
      assert stats.binom_tail(k, n) == pytest.approx(direct, abs=1e-15)
  assert stats.binom_tail(3, 10, 0.3) == pytest.approx(
      1 - sum(math.comb(10, i) * 0.3 ** i * 0.7 ** (10 - i) for i in range(3)))
  scipy_stats = pytest.importorskip("scipy.stats")
  for k, n in [(78, 100), (7, 9), (12, 20)]:
    ref = scipy_stats.binomtest(k, n, 0.5, alternative="greater").pvalue
    assert stats.binom_tail(k, n) == pytest.approx(ref, rel=1e-12)


def test_ties_rule_and_unpaired_tasks():
  res = stats.win_rate({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.0, "b": 2.05, "d": 9.0},
                       tie_tol=0.1)
  assert (res["wins"], res["losses"], res["ties"], res["unpaired"]) == (0, 0, 2, 2)
  assert math.isnan(res["win_rate"]) and math.isnan(res["p_value"])


def test_compare_script_on_run_dirs_with_seed_means(tmp_path, scripts, capsys):
  compare = scripts("compare")
  a0 = fake_run(tmp_path / "a0", {"method": "mode"}, A)
  a1 = fake_run(tmp_path / "a1", {"method": "mode"}, {t: v + 2 for t, v in A.items()})
  b = fake_run(tmp_path / "b", {"method": "lora"}, B)
  assert compare.per_task(f"{a0},{a1}")["t1"] == pytest.approx(51.0)
  compare.main([a0, b])
  out = capsys.readouterr().out
  assert "A wins 7, loses 2, ties 1 (dropped)" in out
  assert "win rate 77.8% of n=9" in out and "p = 0.08984" in out
