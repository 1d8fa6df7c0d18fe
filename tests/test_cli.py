"""The `python -m mode_jax.<entry>` command lines, as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)


@pytest.mark.slow
def test_train_cli_names_a_misspelled_configurable():
  out = _run("mode_jax.train", "--gin_file=experiments/quickstart_tiny.gin",
             "--gin_bindings=trian.train_steps = 3")
  assert out.returncode != 0
  assert "No configurable matching 'trian'" in out.stderr + out.stdout


@pytest.mark.slow
def test_eval_cli_names_a_missing_macro():
  out = _run("mode_jax.eval", "--gin_file=models/tiny.gin", "--gin_file=adapters/mode.gin",
             "--gin_file=runs/eval.gin")
  assert out.returncode != 0
  assert "MODEL_DIR" in out.stderr + out.stdout


# Every entry point run as `__main__` with --help, in one interpreter (one
# start instead of seven): runpy executes each module as `python -m` does.
_HELP_DRIVER = """
import contextlib, io, json, runpy, sys
out = {}
for entry in sys.argv[1:]:
  buf, code = io.StringIO(), "returned"
  sys.argv = [entry, "--help"]
  with contextlib.redirect_stdout(buf):
    try:
      runpy.run_module(entry, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code
  out[entry] = {"code": code, "stdout": buf.getvalue(), "tf": "tensorflow" in sys.modules}
print("HELP_JSON" + json.dumps(out))
"""
# Each entry's own flags: a --help that printed another parser's text fails.
_HELP_FLAGS = {
    "mode_jax.train": ("--gin_file", "--gin_bindings", "--multihost", "--restore_step"),
    "mode_jax.eval": ("--gin_file", "--gin_bindings", "--multihost", "--restore_step"),
    "mode_jax.infer": ("--gin_file", "--gin_bindings", "--multihost", "--restore_step"),
    "mode_jax.export": ("--gin_file", "--gin_bindings"),
    "mode_jax.convert": ("--base", "--param_dtype", "--model_parallel", "src", "dst"),
    "mode_jax.quickstart": ("--gin_file", "--base_steps", "--model_dir"),
    "mode_jax.aot": ("--topology", "--headroom", "--no_decode"),
}


@pytest.fixture(scope="module")
def helps():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _HELP_DRIVER, *_HELP_FLAGS], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.split("HELP_JSON", 1)[1])


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(_HELP_FLAGS))
def test_entry_points_have_help(helps, entry):
  got = helps[entry]
  assert got["code"] == 0, got
  name = entry.split(".")[-1]
  assert got["stdout"].startswith(f"usage: {name}.py"), got["stdout"][:200]
  for flag in _HELP_FLAGS[entry]:
    assert flag in got["stdout"], (entry, flag)


@pytest.mark.slow
def test_help_answers_without_tensorflow(helps):
  """--help (and a configuration error at start-up) never waits on TensorFlow's import."""
  assert not any(h["tf"] for h in helps.values()), {e: h["tf"] for e, h in helps.items()}


@pytest.mark.slow
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
