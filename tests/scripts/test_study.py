"""The study's report on fake run directories: per-instance files, pairs, routing by category."""

import json
import os

import numpy as np
import pytest

from mode_jax.experiments import study
from mode_jax.experiments import study_report
from tests.scripts.conftest import fake_run

ADAPTERS = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_full_sample",
                        "adapters")
# Real task names of data/sni_full_sample/adapters (their categories are read).
QA = ("task024_cosmosqa_answer_generation", "task1412_web_questions_question_answering")
MISC = ("task1146_country_capital", "task1321_country_continent")


def _predictions(d, split, scores):
  with open(os.path.join(d, f"predictions_{split}.jsonl"), "w") as f:
    for (task, i), v in scores.items():
      f.write(json.dumps({"task": task, "id": i, "prediction": "", "references": [],
                          "score": {"rougeL": v, "exact_match": 0.0}}) + "\n")


def test_category_sharing_by_hand():
  # Same-category tasks route identically, the two categories on opposite experts.
  load = {QA[0]: [1.0, 0.0], QA[1]: [1.0, 0.0], MISC[0]: [0.0, 1.0], MISC[1]: [0.0, 1.0]}
  per_task = {t: {"layers/0/attn/q": {"load": v}} for t, v in load.items()}
  cats = {t: "qa" for t in QA} | {t: "misc" for t in MISC}
  res = study.category_sharing(per_task, cats, num_permutations=3000)
  assert (res["same"], res["different"], res["gap"]) == (0.0, 1.0, 1.0)
  assert res["same_pairs"] == 2
  # 2 of the 6 distinct label arrangements reach gap 1.
  assert res["p_value"] == pytest.approx(1 / 3, abs=0.03)


def test_study_report_tables(tmp_path):
  root = tmp_path / "study"
  rng = np.random.default_rng(0)
  keys = [(t, f"{t}-{i}") for t in QA + MISC for i in range(5)]
  for method, spec, shift in [("lora", {"rank": 34}, 0.0),
                              ("mode", {"experts": 8, "rank": 4, "expert_rank": 1}, 10.0)]:
    for seed in (0, 1, 2):
      d = fake_run(root / f"{method}_s{seed}", {"method": method, "seed": seed, **spec},
                   {"t": 1.0})
      _predictions(d, "validation", {k: 20.0 + shift + rng.normal() for k in keys})
      _predictions(d, "test", {k: 5.0 + rng.normal() for k in keys[:10]})
      if method == "mode":
        os.makedirs(os.path.join(d, "routing"))
        per = {t: {f"layers/{layer}/attn/{m}": {"load": [0.5 + 0.1 * (t in QA), 0.5 - 0.1 * (t in QA)]}
                   for layer in (0, 1) for m in ("q", "v")} for t in QA + MISC}
        with open(os.path.join(d, "routing", "routing.json"), "w") as f:
          json.dump({"per_task": per}, f)
  os.makedirs(root / "base_only")
  _predictions(str(root / "base_only"), "validation", {k: 1.0 for k in keys})
  out = study_report.write(str(root), ADAPTERS, num_resamples=500)
  text = open(out["markdown"]).read()
  report = json.load(open(out["json"]))
  seen = report["splits"]["validation"]
  assert [r["label"] for r in seen["rows"]] == ["LoRA 34", "MoDE 8x4", "frozen base"]
  assert [r["seeds"] for r in seen["rows"]] == [3, 3, 1]
  pair = seen["pairs"][0]
  assert (pair["a"], pair["b"], pair["n_instances"]) == ("LoRA 34", "MoDE 8x4", 20)
  assert pair["mean_diff"] == pytest.approx(-10.0, abs=1.0) and pair["ci_high"] < 0
  assert (pair["wins"], pair["losses"]) == (0, 4)
  assert [(p["a"], p["b"]) for p in seen["pairs"][1:]] == [("LoRA 34", "frozen base"),
                                                          ("MoDE 8x4", "frozen base")]
  unseen = report["splits"]["test"]  # no base on the test split: method pairs only
  assert len(unseen["pairs"]) == 1 and unseen["rows"][0]["instances"] == 10
  assert len(report["routing"]) == 3 and report["routing"][0]["gap"] > 0
  assert report["routing"][0]["shared_categories"] == {"Misc.": list(MISC),
                                                       "Question Answering": list(QA)}
  assert open(report["routing"][0]["figure"], "rb").read(4) == b"\x89PNG"
  assert "## seen tasks" in text and "## unseen tasks" in text and "| run | tasks |" in text


def test_collect_writes_pair_tables_when_runs_hold_predictions(tmp_path, scripts):
  keys = [(t, f"{t}-{i}") for t in QA for i in range(3)]
  for method, spec, score in [("lora", {"rank": 8}, 10.0), ("mode", {"experts": 2, "rank": 4,
                                                                     "expert_rank": 1}, 12.0)]:
    d = fake_run(tmp_path / f"{method}_s0", {"method": method, "seed": 0, **spec}, {"t": 1.0})
    _predictions(d, "validation", {k: score for k in keys})
  files = scripts("collect").collect(str(tmp_path))["files"]
  text = open(files["pairs_validation"]).read()
  assert "| LoRA 8 | MoDE 2x4 | **-2.00** | [-2.00, -2.00] | 6 | 0-2 (0) | 0% | 0.5 |" in text
  assert "pairs_test" not in files


def test_study_script_jobs(scripts, tmp_path):
  mod = scripts("study")
  from mode_jax.experiments import backends
  from mode_jax.experiments import presets
  base = mod.base_job(str(tmp_path), presets.STUDY_GIN, "/ckpt/base")
  assert base.model_dir == str(tmp_path / "base_only")
  assert "evaluate.adapter=None" in base.bindings and 'BASE_CHECKPOINT="/ckpt/base"' in base.bindings
  assert base.gin_files == ("experiments/study_cpu_tiny.gin", "adapters/lora.gin")
  pts = presets.expand("study")
  assert [p.seed for p in pts] == [0] * 4 + [1] * 4 + [2] * 4  # seed 0 of every method first
  job = backends.make_job(pts[3], str(tmp_path), presets.STUDY_GIN, (), "/ckpt/base")
  argv = mod.unseen_job_argv(job, "python")
  assert argv[:3] == ["python", "-m", "mode_jax.eval"]
  assert argv[-2:] == ['--gin_bindings=evaluate.split="test"',
                       '--gin_bindings=evaluate.predictions_file="predictions_test.jsonl"']


def test_study_runs_jobs_once_each_on_their_own_cores(scripts, monkeypatch):
  mod = scripts("study")
  seen = []
  lock = __import__("threading").Lock()

  def fake_run_job(job, python, log):
    with lock:
      seen.append((job, frozenset(os.sched_getaffinity(0))))

  monkeypatch.setattr(mod, "run_job", fake_run_job)
  jobs = [f"job{i}" for i in range(7)]
  mod.run_jobs(jobs, "python", num_workers=1)
  assert [j for j, _ in seen] == jobs  # one worker: in order, in this thread
  seen.clear()
  cpus = sorted(os.sched_getaffinity(0))
  mod.run_jobs(jobs, "python", num_workers=2)
  assert sorted(j for j, _ in seen) == jobs
  masks = {m for _, m in seen}
  if len(cpus) >= 2:  # each worker on its own half of the CPUs
    assert masks <= {frozenset(cpus[0::2]), frozenset(cpus[1::2])}
  assert set(os.sched_getaffinity(0)) == set(cpus)  # the caller's own mask is untouched
