"""Test set-up: 8 fake CPU devices, before JAX is imported anywhere.

Shared by the whole suite (see tests/README.md, "Shared work"):
  * a persistent JAX compilation cache for this run, in a fresh temporary
    directory whose path is exported as JAX_COMPILATION_CACHE_DIR, so every
    process the suite starts (entry points, multi-host groups, SIGKILL
    restarts) reuses the train and decode steps another one compiled;
  * `sni_cache`: one prepared-SNI cache directory for the session, so the
    bundled sample is tokenised once, not once per module;
  * `copy_run`: copies of a run directory made once, for tests that damage
    or extend it.
"""

import atexit
import os
import shutil
import tempfile

# The suite's programs are tiny and compiled once each: LLVM's optimisation
# of the generated CPU code costs more than it saves (the suite's train,
# sharding and scan tests compile about twice as fast at level 0). HLO
# passes, and so the compiled HLO that tests read, are unchanged.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" {TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One compilation cache per run of the suite (never reused across runs, so a
# changed jax or XLA flag cannot meet stale entries); MODE_JAX_TEST_JIT_CACHE
# names a directory to keep instead. The cache key is the compiled program,
# its devices and options, so a cached step is the step that would compile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = os.environ.get("MODE_JAX_TEST_JIT_CACHE") or tempfile.mkdtemp(prefix="mode_jax_jit_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  if not os.environ.get("MODE_JAX_TEST_JIT_CACHE"):
    atexit.register(shutil.rmtree, _cache, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def sni_cache(tmp_path_factory) -> str:
  """One prepared-SNI cache (TFRecords keyed by file, vocabulary and prompts) for the suite.

  Entries are keyed by content and written atomically, so modules and their
  subprocesses share it safely; tests of the cache itself use their own.
  """
  return str(tmp_path_factory.mktemp("sni_cache"))


@pytest.fixture
def copy_run(tmp_path):
  """copy_run(src, name="run") -> a private copy of run directory `src` under tmp_path."""
  def copy(src, name="run"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return str(dst)
  return copy


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, sni_cache):
  """The suite's tiny trained run (tests/tiny.py): read it, or copy it to change it.

  {"model_dir", "cache", "summary", "console"}; do not write into model_dir.
  """
  from tests import tiny  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  summary, console = tiny.train_capturing(model_dir, sni_cache, tiny.STEPS, tiny.EVAL)
  return {"model_dir": model_dir, "cache": sni_cache, "summary": summary, "console": console}


# --- Markers that mean something -------------------------------------------
# Each test is watched while its fixtures are set up and while it runs: a
# Python subprocess, a training (train's metrics logger), a multi-process
# group (--multihost) or a libtpu compile for a topology must come with its
# marker, or the test fails naming what it launched. `-m "not slow"` is then
# a fast inner loop by construction, not by convention.
_LAUNCHED: list = []


def _watch_launches():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  popen_init = subprocess.Popen.__init__

  def init(self, args, *a, **kw):
    argv = [str(x) for x in (args if isinstance(args, (list, tuple)) else [args])]
    is_python = bool(argv) and (argv[0] == sys.executable or "python" in os.path.basename(argv[0]))
    if is_python and not any("emulator_main.py" in x for x in argv):  # the GCS service
      _LAUNCHED.append(("slow", f"a subprocess ({' '.join(argv[:3])} ...)"))
      if "--multihost" in argv:
        _LAUNCHED.append(("multihost", "a multi-process group (--multihost)"))
    popen_init(self, args, *a, **kw)

  subprocess.Popen.__init__ = init
  from mode_jax import metrics_log  # pylint: disable=g-import-not-at-top
  logger_init = metrics_log.MetricsLogger.__init__

  def logger(self, model_dir, name="train", *a, **kw):
    if name == "train":
      _LAUNCHED.append(("slow", f"a training ({model_dir})"))
    logger_init(self, model_dir, name, *a, **kw)

  metrics_log.MetricsLogger.__init__ = logger
  from mode_jax import aot  # pylint: disable=g-import-not-at-top
  devices = aot.topology_devices

  def topology_devices(*a, **kw):
    _LAUNCHED.append(("tpu_compile", "a libtpu topology"))
    return devices(*a, **kw)

  aot.topology_devices = topology_devices


def pytest_configure(config):
  _watch_launches()


def pytest_collection_modifyitems(items):
  for item in items:  # multihost and tpu_compile tests are slow tests too
    if item.get_closest_marker("multihost") or item.get_closest_marker("tpu_compile"):
      item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  launched, _LAUNCHED[:] = list(_LAUNCHED), []
  if call.when == "teardown" or report.failed:
    return
  missing = sorted({f"@pytest.mark.{m} (it launched {what})" for m, what in launched
                    if not item.get_closest_marker(m)})
  if missing:
    report.outcome = "failed"
    report.longrepr = f"{item.nodeid} is not marked: " + "; ".join(missing)
