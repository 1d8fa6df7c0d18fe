"""Metrics against hand-computed values (official SNI script semantics)."""

import pytest

from mode_jax.data import metrics


def test_normalize():
  assert metrics.normalize_answer("  The  Cat's\that!! ") == "the cats hat"
  assert metrics.normalize_answer("A.B,C") == "abc"
  assert metrics.normalize_answer("...") == ""


def test_exact_match_edge_cases():
  assert metrics.exact_match("Paris.", "paris") == 1.0
  assert metrics.exact_match("New  York", "new york!") == 1.0
  assert metrics.exact_match("New-York", "new york") == 0.0  # "-" is deleted: "newyork".
  assert metrics.exact_match("", "") == 1.0
  assert metrics.exact_match("Paris", "Pariss") == 0.0


def test_rouge_l_hand_computed():
  # LCS("the cat sat", "the cat ran") = 2 tokens: P = R = 2/3, F = 2/3.
  assert metrics.rouge_l("the cat sat", "the cat ran") == pytest.approx(2 / 3)
  # Stemming: "running" and "runs" both stem to "run"; punctuation is dropped.
  assert metrics.rouge_l("Running!", "runs") == pytest.approx(1.0)
  # LCS = 1 of pred 1 token, ref 4 tokens: P = 1, R = 1/4, F = 2*1*0.25/1.25 = 0.4.
  assert metrics.rouge_l("dog", "the dog is big") == pytest.approx(0.4)
  assert metrics.rouge_l("", "x") == 0.0


def test_sni_metrics_max_over_references_and_mean():
  refs = [["Paris", "paris, France"], ["the dog is big", "cat"], ["a b c d"]]
  preds = ["paris", "dog", "x y"]
  # EM: 1, 0, 0 -> 33.3333; ROUGE-L: 1, max(0.4, 0) = 0.4, 0 -> 46.6667.
  got = metrics.sni_metrics(refs, preds)
  assert got == {"rougeL": 46.6667, "exact_match": 33.3333}


def test_several_references_best_one_counts():
  got = metrics.sni_metrics([["no match here", "the cat sat"]], ["the cat ran"])
  assert got == {"rougeL": round(100 * 2 / 3, 4), "exact_match": 0.0}


def test_grouped():
  refs = [["a"], ["b"], ["c"]]
  preds = ["a", "x", "c"]
  got = metrics.grouped_sni_metrics(refs, preds, ["t1", "t1", "t2"],
                                    ["Question Answering", "Question Answering", "Misc."])
  assert got["overall"]["exact_match"] == 66.6667
  assert got["per_task"] == {"t1": {"rougeL": 50.0, "exact_match": 50.0},
                             "t2": {"rougeL": 100.0, "exact_match": 100.0}}
  assert set(got["per_category"]) == {"question_answering", "misc."}


def test_bad_inputs():
  with pytest.raises(ValueError):
    metrics.sni_metrics([["a"]], ["a", "b"])
  with pytest.raises(ValueError):
    metrics.sni_metrics(["a"], ["a"])  # references must be lists.


def test_seqio_metric_fn():
  assert metrics.seqio_metric_fn([["Paris", "x"], "dog"], ["paris", "cat"]) == {
      "rougeL": 50.0, "exact_match": 50.0}
