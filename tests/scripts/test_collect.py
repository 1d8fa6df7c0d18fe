"""collect.py on fake run dirs: CSV / Markdown columns and the PNG plots."""

import csv
import os

import numpy as np

from mode_jax.experiments import redundancy
from tests.scripts.conftest import fake_run


def test_collect_tables_and_plots(tmp_path, scripts):
  root = tmp_path / "sweep"
  for seed in (0, 1):
    for m, r, score in [(2, 4, 30.0), (4, 4, 35.0), (2, 8, 33.0), (4, 8, 40.0)]:
      fake_run(root / f"mode_m{m}_R{r}_p1_s{seed}",
               {"method": "mode", "experts": m, "rank": r, "expert_rank": 1, "seed": seed,
                "lr": None}, {"t1": score + seed, "t2": score - seed},
               {"qa": score, "misc.": score + 1}, trainable=1000 * m * r, percent=0.1 * m * r)
    fake_run(root / f"lora_R8_s{seed}", {"method": "lora", "rank": 8, "seed": seed},
             {"t1": 20.0, "t2": 22.0}, trainable=5000, percent=0.5)
  fake_run(root / "unfinished", {"method": "lora", "rank": 2, "seed": 0}, {"t": 0.0},
           with_eval=False, with_summary=False)
  res = scripts("collect").collect(str(root), str(tmp_path / "out"))
  files = res["files"]
  with open(files["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 11
  assert list(rows[0])[:16] == ["name", "method", "label", "m", "R", "p", "lr", "seed",
                                "trainable", "percent_added", "rougeL", "exact_match", "steps",
                                "train_seconds", "eval_seconds", "wall_seconds"]
  assert "rougeL/qa" in rows[0] and "rougeL/misc." in rows[0]
  mode = [r for r in rows if r["name"] == "mode_m4_R8_p1_s1"][0]
  assert float(mode["rougeL"]) == 40.0 and mode["trainable"] == "32000"
  md = open(files["md"]).read().splitlines()
  assert md[0].startswith("| name | method | label | m | R | p |") and len(md) == 13
  summary = {r["label"]: r for r in res["summary"]}
  assert summary["MoDE 4x8"]["seeds"] == 2 and summary["MoDE 4x8"]["rougeL_mean"] == 40.0
  for key in ("heatmap_mode", "versus_params"):
    assert os.path.getsize(files[key]) > 1000
    assert open(files[key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_redundancy_clustering_number():
  rng = np.random.default_rng(0)
  shared = rng.normal(size=(4, 16))
  clustered = np.stack([shared + 0.05 * rng.normal(size=shared.shape) for _ in range(3)])
  c = redundancy.clustering(clustered)
  assert c["same_position"] > 0.95 and abs(c["different_position"]) < 0.3 and c["gap"] > 0.6
  assert abs(redundancy.clustering(rng.normal(size=(3, 4, 256)))["gap"]) < 0.1
  # lora_a [P, R] columns and lora_b [R, Q] rows are the rank vectors
  w = {t: {("layers", 0, "attn", "q", "adapter", "lora_a"): shared.T,
           ("layers", 0, "attn", "q", "adapter", "lora_b"): rng.normal(size=(4, 8))}
       for t in ("x", "y")}
  s = redundancy.summarize(w)
  assert s["mean"]["lora_a"]["same_position"] > 0.999
  assert redundancy.pca3(rng.normal(size=(8, 16))).shape == (8, 3)
