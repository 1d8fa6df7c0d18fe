"""Several real JAX processes on 127.0.0.1 against one process holding all devices.

Each case runs the real entry points (`python -m mode_jax.train/infer
--multihost ...`) in N local processes with their own fake CPU devices, and
the same command in one process with all N x k devices reading the same
global batches (`train.data_shards = N`).
"""

import glob
import json
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.multihost import procs

STEPS = 6
EVAL_TASKS = ["task1146_country_capital", "task1321_country_continent"]


def read_item(path: str) -> dict:
  """An Orbax pytree item as {path: numpy array}, whatever devices saved it."""
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    out = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(out)[0]}


def assert_same_items(dir_a: str, dir_b: str, step: int) -> None:
  for item in ("adapters", "opt_state"):
    a = read_item(os.path.join(dir_a, "checkpoints", str(step), item))
    b = read_item(os.path.join(dir_b, "checkpoints", str(step), item))
    assert sorted(a) == sorted(b) and a
    for k in a:
      assert a[k].dtype == b[k].dtype, k
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=f"{item} {k}")


# The three runs read the same global batches: one process reading all 4 data
# shards, 2 processes reading 2 each, 4 processes reading 1 each (seqio
# shards 0..3 of every batch, concatenated in order either way).
FOUR_SHARDS = ["train.data_shards = 4"]  # seqio shards of each global batch, in all


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sni_cache):
  """One process x 4 devices and 2 processes x 2 devices, the same 6 steps, side by side."""
  root = str(tmp_path_factory.mktemp("multihost"))
  cache = sni_cache
  # The reference first: it prepares the data cache the others then read.
  one = procs.launch("mode_jax.train", procs.gin_args(
      os.path.join(root, "one"), cache, STEPS, FOUR_SHARDS),
                     None, 4, os.path.join(root, "logs_one"))
  one_out = one.wait()
  two = procs.run("mode_jax.train", procs.gin_args(os.path.join(root, "two"), cache, STEPS,
                                                   FOUR_SHARDS),
                  2, 2, os.path.join(root, "logs_two"))
  return {"root": root, "cache": cache, "one": os.path.join(root, "one"),
          "two": os.path.join(root, "two"), "one_out": one_out, "two_out": two}


@pytest.mark.slow
@pytest.mark.multihost
def test_two_processes_train_as_one(runs):
  for step in (2, 4, 6):
    assert_same_items(runs["one"], runs["two"], step)


@pytest.mark.slow
@pytest.mark.multihost
def test_each_process_feeds_its_own_rows(runs):
  assert "data shard 0 of 1, 8 rows" in runs["one_out"][0]
  assert "process 0 of 2: data shard 0 of 2, 4 rows" in runs["two_out"][0]
  assert "process 1 of 2: data shard 1 of 2, 4 rows" in runs["two_out"][1]


@pytest.mark.slow
@pytest.mark.multihost
def test_checkpoints_written_once_by_all_processes(runs):
  d = os.path.join(runs["two"], "checkpoints")
  assert sorted(os.listdir(d)) == ["2", "4", "6"]  # no temporary directory left
  for step in (2, 4, 6):
    data = os.path.join(d, str(step), "data")
    states = [json.load(open(os.path.join(data, f"process_{i}.json"))) for i in range(2)]
    assert [s["shard_id"] for s in states] == [0, 1]
    assert all(s["batches"] == step and s["num_shards"] == 2 and s["shards_per_host"] == 2
               for s in states)
    assert not glob.glob(os.path.join(data, "process_2*"))
    assert os.path.exists(os.path.join(data, "process_1.index"))
  # Process 0 alone writes the logs: each step once, one TensorBoard file.
  lines = [json.loads(l) for l in open(os.path.join(runs["two"], "train_metrics.jsonl"))]
  assert [l["step"] for l in lines] == list(range(1, STEPS + 1))
  assert len(glob.glob(os.path.join(runs["two"], "train", "events.out.tfevents*"))) == 1


@pytest.mark.slow
@pytest.mark.multihost
def test_sigkill_of_all_processes_then_restart_ends_the_same(runs):
  model_dir = os.path.join(runs["root"], "killed")
  args = procs.gin_args(model_dir, runs["cache"], STEPS, FOUR_SHARDS)
  group = procs.launch("mode_jax.train", args, 2, 2, os.path.join(runs["root"], "logs_k1"))
  deadline = time.time() + procs.TIMEOUT_S
  while "[step 3]" not in group.output(0):
    assert time.time() < deadline and group.procs[0].poll() is None, group.output(0)[-3000:]
    time.sleep(0.02)
  group.kill()
  outs = procs.run("mode_jax.train", args, 2, 2, os.path.join(runs["root"], "logs_k2"))
  for out in outs:  # both processes restored the checkpoint, each its own data state
    resumed = [l for l in out.splitlines() if l.startswith("resumed from")]
    assert resumed and int(resumed[0].split()[-1]) in (2, 4), out[-3000:]
  assert_same_items(runs["two"], model_dir, STEPS)


def restored_copies(runs, names) -> dict:
  """Fresh run directories holding the 2-process run's checkpoints, by name."""
  dirs = {}
  for name in names:
    dirs[name] = os.path.join(runs["root"], name)
    shutil.copytree(os.path.join(runs["two"], "checkpoints"),
                    os.path.join(dirs[name], "checkpoints"))
  return dirs


def eval_args(model_dir: str, run_gin: str, extra) -> list[str]:
  """Flags of an eval/infer entry point on the tiny multi-host setup."""
  bindings = [f"MODEL_DIR = '{model_dir}'", f"SNI_DIR = '{procs.SNI}'",
              f"VOCAB_PATH = '{procs.VOCAB}'", "INPUT_LENGTH = 48",
              "TASK_FEATURE_LENGTHS = {'inputs': 48, 'targets': 8}", "RANK = 4",
              "evaluate.allow_missing = True", *extra]
  return ([f"--gin_file={f}" for f in procs.GIN_FILES + (run_gin,)]
          + [f"--gin_bindings={b}" for b in bindings])


@pytest.fixture(scope="module")
def evaluated(runs):
  """One eval launch pair for the decode and the loss checks: `mode_jax.infer` with both
  evaluators, in one process x 4 devices and in 2 processes x 2 devices."""
  dirs = restored_copies(runs, ("eval_one", "eval_two"))

  def args(model_dir):
    return eval_args(model_dir, "runs/infer.gin", [
        "evaluate.evaluators = [@evaluators.DecodeEvaluation(), @evaluators.ValidationLoss()]",
        f"evaluators.DecodeEvaluation.tasks = {EVAL_TASKS}",
        "evaluators.DecodeEvaluation.max_decode_len = 4",
        "evaluators.DecodeEvaluation.batch_size = 8", "evaluate.batch_size = 8",
        f"evaluate.mixture_or_task_name = '{procs.TRAIN_TASK}'",
        "evaluators.ValidationLoss.batch_size = 4"])

  one = procs.launch("mode_jax.infer", args(dirs["eval_one"]), None, 4,
                     os.path.join(runs["root"], "logs_e1"))
  procs.run("mode_jax.infer", args(dirs["eval_two"]), 2, 2,
            os.path.join(runs["root"], "logs_e2"))
  one.wait()
  return dirs


@pytest.mark.slow
@pytest.mark.multihost
def test_evaluation_decodes_each_example_once(evaluated):
  dirs = evaluated
  recs = {}
  for name, d in dirs.items():
    lines = [json.loads(l) for l in open(os.path.join(d, "predictions.jsonl"))]
    keys = [(r["task"], r["id"]) for r in lines]
    assert len(keys) == len(set(keys)) > 8  # more than one batch
    recs[name] = lines
  one_recs, two_recs = recs["eval_one"], recs["eval_two"]
  assert [r["process"] for r in one_recs] == [0] * len(one_recs)
  by_proc = [sum(r["process"] == p for r in two_recs) for p in (0, 1)]
  assert min(by_proc) > 0 and sum(by_proc) == len(two_recs)
  strip = lambda r: {k: v for k, v in r.items() if k != "process"}  # noqa: E731
  assert [strip(r) for r in one_recs] == [strip(r) for r in two_recs]
  metrics = [json.load(open(os.path.join(d, "eval", f"validation_metrics_{STEPS}.json")))
             for d in dirs.values()]
  for m in metrics:
    m.pop("seconds")
  assert metrics[0] == metrics[1] and metrics[0]["num_examples"] == len(two_recs)
  d = dirs["eval_two"]
  # Process 0 alone writes the logs: one line (and one events file) per evaluator.
  assert len(glob.glob(os.path.join(d, "eval_validation", "events.out.tfevents*"))) == 2
  assert len(open(os.path.join(d, "eval_validation_metrics.jsonl")).readlines()) == 2
  assert sorted(os.listdir(os.path.join(d, "eval"))) == [f"validation_loss_{STEPS}.json",
                                                         f"validation_metrics_{STEPS}.json"]


@pytest.mark.slow
@pytest.mark.multihost
def test_validation_loss_of_two_processes_equals_one(evaluated):
  """Row-sharded teacher-forced loss: same numbers, each held-out row counted once."""
  got = [json.load(open(os.path.join(d, "eval", f"validation_loss_{STEPS}.json")))
         for d in evaluated.values()]
  assert got[0]["tokens"] == got[1]["tokens"] > 0
  np.testing.assert_allclose(got[1]["loss"], got[0]["loss"], rtol=1e-5)
  assert list(got[0]["per_task"]) == [procs.TRAIN_TASK]


@pytest.mark.slow
@pytest.mark.multihost
def test_four_processes_train_as_one(tmp_path, runs):
  """4 processes x 1 device, one data shard each, against the 1-process run (4 shards)."""
  root = str(tmp_path)
  outs = procs.run("mode_jax.train", procs.gin_args(os.path.join(root, "four"), runs["cache"], 2),
                   4, 1, os.path.join(root, "logs_four"))
  assert [f"data shard {i} of 4" in out for i, out in enumerate(outs)] == [True] * 4
  assert_same_items(runs["one"], os.path.join(root, "four"), 2)
  assert len(os.listdir(os.path.join(root, "four", "checkpoints", "2", "data"))) >= 4 * 3
