"""Predictions as JSONL: `python -m mode_jax.infer --gin_file=runs/infer.gin ...`.

Writes `<MODEL_DIR>/predictions.jsonl`, one line per instance with task, id,
prompt, prediction, references, score and the process that decoded it (the
same decode as `eval`; with `--multihost` each process decodes its rows and
process 0 writes the file).
"""

from mode_jax import eval as eval_lib
from mode_jax import launch


def infer():
  """`evaluate` with predictions written (runs/infer.gin names the file)."""
  return eval_lib.evaluate()


if __name__ == "__main__":
  launch.parse_and_run(infer)
