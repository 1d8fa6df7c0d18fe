"""The `python -m mode_jax.<entry>` command lines, as a user runs them."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


def test_train_cli_names_a_misspelled_configurable():
  out = _run("mode_jax.train", "--gin_file=experiments/quickstart_tiny.gin",
             "--gin_bindings=trian.train_steps = 3")
  assert out.returncode != 0
  assert "No configurable matching 'trian'" in out.stderr + out.stdout


def test_eval_cli_names_a_missing_macro():
  out = _run("mode_jax.eval", "--gin_file=models/tiny.gin", "--gin_file=adapters/mode.gin",
             "--gin_file=runs/eval.gin")
  assert out.returncode != 0
  assert "MODEL_DIR" in out.stderr + out.stdout


@pytest.mark.parametrize("entry", ["mode_jax.train", "mode_jax.infer", "mode_jax.export",
                                   "mode_jax.convert", "mode_jax.quickstart"])
def test_entry_points_have_help(entry):
  out = _run(entry, "--help")
  assert out.returncode == 0, out.stderr
  assert "--gin_file" in out.stdout or "usage" in out.stdout


def test_train_cli_reaches_the_configured_function(tmp_path):
  # Run as __main__, the entry module must not register `train` twice
  # (gin would fail with "Ambiguous selector"); TRAIN_STEPS=0 then stops in
  # train()'s own validation, after gin resolved every binding.
  out = _run("mode_jax.train", "--gin_file=experiments/quickstart_tiny.gin",
             f"--gin_bindings=MODEL_DIR = '{tmp_path}'", "--gin_bindings=TRAIN_STEPS = 0")
  assert out.returncode != 0
  text = out.stderr + out.stdout
  assert "Ambiguous" not in text
  assert "need train_steps >= 1" in text
