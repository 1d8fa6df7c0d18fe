"""redundancy.py and routing.py: the jobs and statistics, without training."""

import argparse

import pytest


def test_redundancy_jobs_share_or_split_the_initialisation(scripts, tmp_path):
  red = scripts("redundancy")
  args = argparse.Namespace(tasks=["task114_is_the_given_word_longest",
                                   "task141_odd-man-out_classification_category"],
                            control=True, seed=0, rank=8, steps=50, root=str(tmp_path),
                            gin_file=["experiments/sweep_cpu_tiny.gin"], gin_bindings=[],
                            base_checkpoint="/base", targets=["q", "k", "v", "o"])
  jobs = red.make_jobs(args)
  assert [j.point.seed for j in jobs["shared"]] == [0, 0]
  assert [j.point.seed for j in jobs["control"]] == [1, 2]
  j = jobs["shared"][1]
  assert j.model_dir == str(tmp_path / "shared" / "lora_R8_s0_task141")
  assert 'MIXTURE_OR_TASK_NAME="sni_task141_odd_man_out_classification_category"' in j.bindings
  assert "TRAIN_STEPS=50" in j.bindings and 'BASE_CHECKPOINT="/base"' in j.bindings
  assert j.gin_files[-1] == "adapters/lora.gin"


def test_routing_specialisation(scripts):
  routing = scripts("routing")
  # Two tasks on opposite experts: each is 0.5 (total variation) from the mean.
  apart = {"a": {"m": {"load": [1.0, 0.0]}}, "b": {"m": {"load": [0.0, 1.0]}}}
  assert routing.specialisation(apart) == {"m": pytest.approx(0.5)}
  same = {"a": {"m": {"load": [0.3, 0.7]}}, "b": {"m": {"load": [0.3, 0.7]}}}
  assert routing.specialisation(same) == {"m": pytest.approx(0.0)}
