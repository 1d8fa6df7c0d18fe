"""Every setting is checked before heavy work: named errors, no model built.

In-process tests put a tripwire on `experiment.build_model` (it raises if
reached), so each error is proven to come before any model is built or any
weight read; the command-line tests run the real entry point.
"""

import contextlib
import glob
import inspect
import os
import subprocess
import sys

import pytest

from mode_jax import experiment
from mode_jax import launch
from mode_jax import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "experiments/quickstart_tiny.gin"


def _cli(*bindings):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  argv = [sys.executable, "-m", "mode_jax.train", f"--gin_file={QUICK}"]
  argv += [f"--gin_bindings={b}" for b in bindings]
  out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  return out.returncode, out.stdout + out.stderr


@pytest.fixture
def tripwire(monkeypatch):
  def built(*a, **k):
    raise AssertionError("a model was built before the settings were checked")
  monkeypatch.setattr(experiment, "build_model", built)


def _train(model_dir, *bindings, cache=None):
  launch.parse_gin([QUICK], [f"MODEL_DIR = '{model_dir}'", *bindings] +
                   ([f"train.cache_dir = '{cache}'"] if cache else []))
  return launch.call_configured(train_lib.train)


@pytest.mark.slow  # a subprocess
def test_cli_misspelled_macro_fails_suggesting_the_nearest(tmp_path):
  rc, text = _cli(f"MODEL_DIR='{tmp_path}'", "TRAIN_STEP=3")
  assert rc != 0
  assert "TRAIN_STEP" in text and "did you mean TRAIN_STEPS?" in text, text[-2000:]
  assert "Macros in use:" in text and "BATCH_SIZE" in text
  assert not os.listdir(tmp_path)  # Nothing written: it failed at parse time.


@pytest.mark.slow  # a subprocess
def test_cli_wrong_type_names_setting_macro_and_type(tmp_path):
  rc, text = _cli(f"MODEL_DIR='{tmp_path}'", "TRAIN_STEPS='abc'")
  assert rc != 0
  assert "train.train_steps (macro TRAIN_STEPS) must be int, got str 'abc'" in text, text[-2000:]
  assert "Traceback" not in text.split("invalid setting")[-1]


def test_unused_macro_binding_in_process():
  with pytest.raises(SystemExit, match=r"sets macro RANKK.*did you mean RANK\?"):
    launch.parse_gin([QUICK], ["MODEL_DIR = 'x'", "RANKK = 2"])
  with pytest.raises(SystemExit, match=r"sets macro NOT_A_SETTING, which no included"):
    launch.parse_gin([QUICK], ["MODEL_DIR = 'x'", "NOT_A_SETTING = 2"])
  launch.parse_gin([QUICK], ["MODEL_DIR = 'x'", "RANK = 2"])  # Used: fine.


@pytest.mark.parametrize("binding,match", [
    ("TRAIN_STEPS = 'abc'", r"train.train_steps \(macro TRAIN_STEPS\) must be int"),
    ("BATCH_SIZE = 2.5", r"train.batch_size \(macro BATCH_SIZE\) must be int, got float"),
    ("train.allow_missing = 'yes'", r"train.allow_missing must be bool, got str 'yes'"),
    ("TASK_FEATURE_LENGTHS = {'inputs': 0, 'targets': 8}", "TASK_FEATURE_LENGTHS must be"),
    ("TASK_FEATURE_LENGTHS = {'inputs': 8}", "TASK_FEATURE_LENGTHS must be"),
    ("TASK_FEATURE_LENGTHS = {'inputs': '8', 'targets': 8}", r"task_feature_lengths.*must be"),
])
def test_wrong_values_are_named_before_the_model(tmp_path, tripwire, binding, match):
  with pytest.raises(SystemExit, match=match):
    _train(tmp_path / "run", binding)


def test_decoding_batch_that_does_not_split_is_named_before_the_model(tmp_path, tripwire):
  """In-training and stand-alone evaluation batches must split over the 8
  data-parallel devices (else every device would decode the whole batch)."""
  with pytest.raises(ValueError, match=r"train.eval_batch_size=12 does not split over the 8 "
                                       r"data-parallel devices of the mesh \(data=8"):
    _train(tmp_path / "run", "train.eval_every = 5", "train.eval_batch_size = 12")
  with pytest.raises(AssertionError, match="a model was built"):  # no evaluation: no check
    _train(tmp_path / "run2", "train.eval_batch_size = 12")
  from mode_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  launch.parse_gin(["models/tiny_quickstart.gin", "adapters/mode.gin", "runs/eval.gin"],
                   [f"MODEL_DIR = '{tmp_path}'", f"SNI_DIR = '{REPO}/data/sni_sample'",
                    "INPUT_LENGTH = 32", "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 8}",
                    "evaluate.batch_size = 12"])
  with pytest.raises(ValueError, match=r"evaluate.batch_size=12 does not split over the 8 "
                                       r"data-parallel devices.*multiple of 8"):
    launch.call_configured(eval_lib.evaluate)


def test_model_dir_that_is_a_file(tmp_path, tripwire):
  path = tmp_path / "run"
  path.write_text("not a directory")
  with pytest.raises(NotADirectoryError, match=r"MODEL_DIR .*run' is a file"):
    _train(path)
  with pytest.raises(NotADirectoryError, match="a parent is a file"):
    _train(path / "sub")


@contextlib.contextmanager
def _read_only_dir(path):
  """A directory nobody may write into, root included (CI runs as root).

  As root: a read-only tmpfs mounted on it (chmod does not stop root); else
  mode 0555.
  """
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o555)
    yield path
    return
  rc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                      capture_output=True, text=True)
  assert rc.returncode == 0, f"cannot mount a read-only tmpfs as root: {rc.stderr}"
  try:
    yield path
  finally:
    subprocess.run(["umount", str(path)], check=True)


def test_model_dir_not_writable(tmp_path, tripwire):
  # /sys refuses new entries even to root; chmod does not stop root.
  with pytest.raises(PermissionError, match=r"MODEL_DIR '/sys/mode_jax_run' is not writable"):
    _train("/sys/mode_jax_run")
  with _read_only_dir(tmp_path / "ro") as ro:
    with pytest.raises(PermissionError, match="is not writable"):
      _train(ro / "run")
    with pytest.raises(PermissionError, match="is not writable"):
      _train(ro)  # the directory itself exists but cannot take the lock


def test_unknown_mixture_is_named_before_the_model(tmp_path, tripwire):
  with pytest.raises(ValueError, match=r"'sni_trian' is not a registered.*did you mean "
                                       r"'sni_train'"):
    _train(tmp_path / "run", "MIXTURE_OR_TASK_NAME = 'sni_trian'", cache=tmp_path / "cache")
  assert not (tmp_path / "run" / "RUN_LOCK.json").exists()  # Data is checked before the lock.


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "experiments",
                                                             "*.gin"))))
def test_shipped_experiment_files_pass_the_type_checks(path):
  from mode_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  files, bindings = [path], ["MODEL_DIR = 'x'", "SNI_DIR = 'y'"]
  if any(w in os.path.basename(path) for w in ("sweep", "study", "paper_")):
    # Shared setups (sweeps, paper_gemma_2b.gin): each point adds its adapter file and macros.
    files, bindings = [path, "adapters/mode.gin"], bindings + ["RANK = 4", "EXPERTS = 4"]
  launch.parse_gin(files, bindings)
  for fn, name in ((train_lib.train, "train"), (eval_lib.evaluate, "evaluate")):
    values = {}
    for p in inspect.signature(inspect.unwrap(fn)).parameters:
      try:
        values[p] = launch.query(f"{name}.{p}")
      except ValueError:
        pass
    launch.check_arguments(fn, values)
