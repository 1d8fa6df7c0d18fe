"""The experiments layer: sweep points, presets, launch backends, run results.

Reusable logic of `scripts/` (sweeps, tables, statistics, analyses). Nothing
imports TensorFlow at import time (the TPU backend's bucket checks and the
analyses import it lazily); gin stays in the scripts and the `.gin` files
they name.

Modules:
  points     Point (one run of a sweep), grids, adapter configs, counts,
             budget matching with `adapters.count_params`.
  presets    PRESETS: the paper's grids and CPU-scale grids, as data.
  backends   commands of a point (train, eval) and the local / print / TPU
             backends.
  rundirs    finished-run detection and reading a run's results.
  stats      task-level win rate and the one-sided binomial sign test.
  tables     the results table of a sweep (CSV, Markdown) and its plots.
  redundancy column-clustering statistics and PCA of LoRA factors.
  plots      heat map over experts x rank, ROUGE-L against added parameters.
  restore    a run's settings (from point.json), adapter weights and model.
  base       the cached tiny quickstart base of CPU sweeps.
"""
