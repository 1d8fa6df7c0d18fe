"""Train / resume / eval / infer / export on the tiny config, through gin."""

import dataclasses
import json
import os

import gin
import jax
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import checkpoints
from mode_jax import datasets
from mode_jax import experiment
from mode_jax import export as export_lib
from mode_jax import launch
from mode_jax import models
from mode_jax import sharding
from mode_jax import train as train_lib
from mode_jax import trainer

from tests import tiny

SNI, VOCAB, TASKS = tiny.SNI, tiny.VOCAB, tiny.TASKS


class _Poisoned:
  """A batch stream whose batch `at` (1-based) has NaN loss weights; else `inner`'s."""

  def __init__(self, inner, at: int):
    self.inner, self.at, self.drawn = inner, at, 0

  def __next__(self):
    batch = next(self.inner)
    self.drawn += 1
    if self.drawn == self.at:
      batch = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"] * np.nan)
    return batch

  def __getattr__(self, name):  # state, save_checkpoint, restore_checkpoint
    return getattr(self.inner, name)


@dataclasses.dataclass
class PoisonedSni(datasets.SniDataset):
  """SNI whose training stream turns the loss of batch `poison_batch` NaN."""
  poison_batch: int = 0

  def batches(self, spec):
    stream = super().batches(spec)
    return _Poisoned(stream, self.poison_batch) if spec.split == "train" else stream


gin.external_configurable(PoisonedSni, module="test_train")


_train = tiny.train


def _adapter_weights(model_dir):
  """The latest checkpoint's adapter parameters as {path: array}."""
  model = models.build_model(models.get_config("tiny"),
                             adapters.AdapterConfig(kind="mode", rank=4, num_experts=4))
  _, params, astate, _ = trainer.split_model(model)
  ck = checkpoints.RunCheckpointer(model_dir, async_save=False)
  out = ck.restore_adapters(checkpoints.abstract_like(
      {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params, "adapter_state": astate}))
  ck.close()
  return int(out["step"]), {p: np.asarray(v.get_value()) for p, v in out["params"].flat_state()}


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
  """The suite's tiny run (straight to step 4) and the same run stopped at 2 and resumed."""
  root = tmp_path_factory.mktemp("runs")
  cache = tiny_run["cache"]
  resumed = str(root / "resumed")
  _train(resumed, cache, 2)
  _train(resumed, cache, 4)  # resumes from step 2
  return {"root": root, "cache": cache, "straight": tiny_run["model_dir"], "resumed": resumed,
          "summary": tiny_run["summary"], "console": tiny_run["console"]}


@pytest.mark.slow
def test_train_writes_logs_config_and_checkpoints(runs):
  d = runs["straight"]
  assert runs["summary"]["step"] == 4
  assert os.path.exists(os.path.join(d, "config.gin"))
  assert "TRAIN_STEPS = 4" in open(os.path.join(d, "config.gin")).read()
  lines = [json.loads(l) for l in open(os.path.join(d, "train_metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  for key in ("loss", "learning_rate", "grad_norm", "tokens_per_sec", "steps_per_sec",
              "eta_sec", "routing/mean_entropy", "routing/layers/0/attn/q/entropy"):
    assert key in lines[-1], key
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(d, "train")))
  # The prompts' settings, which `evaluate` rebuilds when evaluate.sni is unbound.
  sni = json.load(open(os.path.join(d, datasets.SNI_CONFIG_FILE)))
  assert sni["max_input_tokens"] == 48 and sni["eval_fraction"] == 0.1
  periodic = json.load(open(os.path.join(d, "eval", "metrics_4.json")))
  assert list(periodic["per_task"]) == [TASKS[0]]
  evals = [json.loads(l) for l in open(os.path.join(d, "eval_metrics.jsonl"))]
  assert [e["step"] for e in evals] == [4] and "validation/rougeL" in evals[0]
  steps = checkpoints.RunCheckpointer(d, async_save=False).all_steps()
  assert steps[-1] == 4 and 2 in steps


@pytest.mark.slow
def test_resume_continues_the_same_run(runs):
  step_a, a = _adapter_weights(runs["straight"])
  step_b, b = _adapter_weights(runs["resumed"])
  assert step_a == step_b == 4
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-5, atol=1e-7, err_msg=str(path))
  lines = [json.loads(l) for l in open(os.path.join(runs["resumed"], "train_metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]


@pytest.mark.slow
def test_run_checkpoint_holds_no_base_and_opt_state_only_for_adapters(runs):
  d = os.path.join(runs["straight"], "checkpoints", "4")
  items = sorted(os.listdir(d))
  assert {"adapters", "opt_state", "data", "config"} <= set(items)
  model = models.build_model(models.get_config("tiny"),
                             adapters.AdapterConfig(kind="mode", rank=4, num_experts=4))
  n_adapter = sum(v.size for v in jax.tree.leaves(nnx.state(model, adapters.TRAINABLE)))
  n_base = sum(v.size for v in jax.tree.leaves(nnx.state(model, adapters.FROZEN_BASE)))
  from orbax import checkpoint as ocp
  meta = ocp.StandardCheckpointer().metadata(os.path.join(d, "adapters"))
  tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
  n_saved = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree) if hasattr(x, "shape"))
  assert n_saved == n_adapter + 1  # + the step counter
  assert n_saved < n_base / 5


@pytest.mark.slow
def test_frozen_base_is_bit_identical_after_training(tmp_path):
  cfg = models.get_config("tiny")
  acfg = adapters.AdapterConfig(kind="mode", rank=4, num_experts=4)
  mesh = sharding.make_mesh()
  model = experiment.build_model(cfg, acfg, mesh)
  before = {p: np.asarray(v.get_value()) for p, v in
            nnx.state(model, adapters.FROZEN_BASE).flat_state()}
  from mode_jax import optim
  graphdef, params, astate, frozen = trainer.split_model(model)
  init = {p: np.array(v.get_value()) for p, v in params.flat_state()}  # before donation
  tx, sched = optim.make_optimizer(optim.OptimizerConfig(learning_rate=0.1), 3)
  state = trainer.init_state(params, astate, tx)
  # Optimizer state covers adapter parameters only.
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_opt = sum(x.size for x in jax.tree.leaves(state["opt_state"]))
  n_base = sum(x.size for x in jax.tree.leaves(frozen))
  assert n_opt < 3 * n_params < n_base
  toks = jax.random.randint(jax.random.key(0), (8, 9), 0, cfg.vocab_size)
  batch = {"decoder_input_tokens": toks[:, :-1], "decoder_target_tokens": toks[:, 1:],
           "decoder_loss_weights": np.ones((8, 8), np.float32)}
  with sharding.use_mesh(mesh):
    step = trainer.jit_train_step(trainer.make_train_step(graphdef, tx, sched), state, frozen,
                                  batch, mesh)
    for _ in range(3):
      state, m = step(state, frozen, batch)
  after = {p: np.asarray(v.get_value()) for p, v in frozen.flat_state()}
  assert before.keys() == after.keys()
  for p in before:
    np.testing.assert_array_equal(before[p], after[p])
  # ... while the adapters did train.
  moved = [p for p, v in state["params"].flat_state()
           if not np.array_equal(np.asarray(v.get_value()), init[p])]
  assert moved and bool(m["finite"])


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_last_good_checkpoint(runs):
  d = str(runs["root"] / "nan")
  with pytest.raises(train_lib.NonFiniteLossError, match="non-finite loss at step 3"):
    # Injected through the dataset seam, bound in gin like any dataset.
    _train(d, runs["cache"], 4, [
        "train.dataset = @test_train.PoisonedSni()", "test_train.PoisonedSni.sni_dir = %SNI_DIR",
        "test_train.PoisonedSni.vocab_path = %VOCAB_PATH",
        "test_train.PoisonedSni.sni = @data.SniConfig()",
        "test_train.PoisonedSni.allow_missing = True",
        f"test_train.PoisonedSni.cache_dir = '{runs['cache']}'",
        "test_train.PoisonedSni.poison_batch = 3"])
  ck = checkpoints.RunCheckpointer(d, async_save=False)
  assert ck.latest_step() == 2
  step, w = _adapter_weights(d)
  assert step == 2 and all(np.isfinite(v).all() for v in w.values())


@pytest.mark.slow
def test_eval_infer_export(runs, copy_run):
  d = copy_run(runs["straight"])  # evaluation writes into the run directory
  from mode_jax import eval as eval_lib
  launch.parse_gin(["models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin",
                    "runs/infer.gin"],
                   tiny.bindings(d, runs["cache"], 4, ["evaluate.allow_missing = True",
                                                   f"evaluate.tasks = {list(TASKS)}",
                                                   "evaluate.max_decode_len = 8"]))
  metrics = launch.call_configured(eval_lib.evaluate)
  assert metrics["step"] == 4
  assert set(metrics["per_task"]) == set(TASKS)
  assert 0 <= metrics["overall"]["rougeL"] <= 100
  assert metrics["per_category"]
  preds = [json.loads(l) for l in open(os.path.join(d, "predictions.jsonl"))]
  assert len(preds) == metrics["num_examples"] > 0
  assert set(preds[0]) == {"task", "id", "prompt", "prediction", "references", "score",
                           "process"}
  assert os.path.exists(os.path.join(d, "eval", "validation_metrics_4.json"))

  out = export_lib.export(model_dir=d, model="tiny",
                          adapter=adapters.AdapterConfig(kind="mode", rank=4, num_experts=4),
                          export_dir=str(runs["root"] / "export"))
  manifest = json.load(open(os.path.join(out, "manifest.json")))
  assert manifest["method"]["kind"] == "mode" and manifest["step"] == 4
  assert "TRAIN_STEPS = 4" in manifest["gin_config"]
  assert any(k.endswith("lora_b") for k in manifest["shapes"])
  with pytest.raises(ValueError, match="merge=True needs a LoRA"):
    export_lib.export(model_dir=d, model="tiny",
                      adapter=adapters.AdapterConfig(kind="mode", rank=4, num_experts=4),
                      merge=True)


def test_lora_merge_equals_adapter_forward():
  cfg = models.get_config("tiny")
  model = models.build_model(cfg, adapters.AdapterConfig(kind="lora", rank=4, b_init_scale=0.1,
                                                         targets=("q", "o", "down")))
  toks = jax.random.randint(jax.random.key(0), (2, 7), 0, cfg.vocab_size)
  with_adapter = model(toks)
  export_lib.merge_lora(model)
  base = models.build_model(cfg, None)
  nnx.update(base, nnx.state(model, adapters.FROZEN_BASE))
  np.testing.assert_allclose(base(toks), with_adapter, atol=1e-4, rtol=1e-4)


def test_bad_gin_fails_naming_the_culprit(tmp_path):
  with pytest.raises(SystemExit, match="trian"):
    launch.parse_gin(["runs/finetune.gin"], ["trian.train_steps = 3"])
  with pytest.raises(SystemExit, match="trian_steps"):
    launch.parse_gin(["runs/finetune.gin"], ["train.trian_steps = 3"])
  with pytest.raises(SystemExit, match="MODEL_DIR"):
    launch.parse_gin(["models/tiny.gin", "adapters/mode.gin", "runs/finetune.gin"], [])
  with pytest.raises(SystemExit, match="not found"):
    launch.parse_gin(["runs/nope.gin"], [])
  with pytest.raises(SystemExit, match="train_steps"):
    launch.parse_gin([], ["train.model_dir = 'x'"])
    launch.call_configured(train_lib.train)


def test_bad_checkpoint_paths_fail_clearly(tmp_path):
  mesh = sharding.make_mesh()
  with pytest.raises(FileNotFoundError, match="BASE_CHECKPOINT .*does not exist"):
    experiment.build_model("tiny", None, mesh, base_checkpoint=str(tmp_path / "missing"))
  (tmp_path / "junk").mkdir()
  with pytest.raises(Exception, match="junk"):
    experiment.build_model("tiny", None, mesh, base_checkpoint=str(tmp_path / "junk"))
  with pytest.raises(ValueError, match="needs BASE_CHECKPOINT"):
    experiment.build_model("gemma_2b", None, mesh)
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    checkpoints.RunCheckpointer(str(tmp_path / "empty"), async_save=False).restore_adapters({})


def test_run_files_paths_keep_buckets_intact(tmp_path):
  from mode_jax import files
  assert files.absolute("gs://b/run") == "gs://b/run"
  assert files.join("gs://b/run", "checkpoints") == "gs://b/run/checkpoints"
  assert files.absolute("rel/dir") == os.path.join(os.getcwd(), "rel", "dir")
  path = str(tmp_path / "a" / "m.jsonl")
  files.append_line(path, "1")
  files.append_line(path, "2")
  files.write_json(str(tmp_path / "a" / "s.json"), {"x": 1})
  assert open(path).read() == "1\n2\n"
  assert json.load(open(tmp_path / "a" / "s.json")) == {"x": 1}
  assert not any(p.name.endswith(".tmp") for p in (tmp_path / "a").iterdir())


def test_gradient_accumulation_equals_the_full_batch():
  from mode_jax import optim
  cfg = models.get_config("tiny")
  acfg = adapters.AdapterConfig(kind="mode", rank=4, num_experts=4, b_init_scale=0.02)
  toks = jax.random.randint(jax.random.key(3), (8, 9), 0, cfg.vocab_size)
  weights = np.ones((8, 8), np.float32)
  weights[:4, :5] = 0.0  # uneven token counts across micro-batches
  batch = {"decoder_input_tokens": toks[:, :-1], "decoder_target_tokens": toks[:, 1:],
           "decoder_loss_weights": weights}
  results = []
  # (micro-batches, loss chunk): the chunked cross-entropy (3 pads 8 to 9)
  # gives the same step as the whole logits.
  for micro, chunk in ((1, 0), (2, 0), (4, 0), (2, 3), (1, 4)):
    model = models.build_model(cfg, acfg, seed=0)
    graphdef, params, astate, frozen = trainer.split_model(model)
    tx, sched = optim.make_optimizer(optim.OptimizerConfig(name="adamw", clip_norm=None), 1)
    step = jax.jit(trainer.make_train_step(graphdef, tx, sched, micro_batches=micro,
                                           loss_chunk=chunk))
    state, metrics = step(trainer.init_state(params, astate, tx), frozen, batch)
    results.append((float(metrics["loss"]), float(metrics["grad_norm"]),
                    {p: np.asarray(v.get_value()) for p, v in state["params"].flat_state()}))
  for loss, gnorm, new in results[1:]:
    np.testing.assert_allclose(loss, results[0][0], rtol=1e-5)
    np.testing.assert_allclose(gnorm, results[0][1], rtol=1e-4)
    for p, v in new.items():
      # AdamW's first step is lr * g / (|g| + eps): where g is tiny, a change
      # of summation order moves it by up to ~1e-6 (lr 1e-3).
      np.testing.assert_allclose(v, results[0][2][p], rtol=1e-4, atol=1e-6, err_msg=str(p))


def test_base_checkpoint_mismatch_names_the_parameter(tmp_path):
  cfg = models.get_config("tiny")
  checkpoints.save_base(str(tmp_path / "base"), models.build_model(cfg), source="test")
  other = models.build_model(cfg.replace(mlp_dim=128), adapters.AdapterConfig(kind="lora"))
  with pytest.raises(ValueError, match=r"layers/0/mlp/\w+/kernel.*shape \(\d+, \d+\), "
                                       r"expected \(\d+, \d+\)"):
    checkpoints.restore_base(str(tmp_path / "base"), other)
  # The right shapes restore the same base weights under an adapted model.
  adapted = models.build_model(cfg, adapters.AdapterConfig(kind="lora"), seed=5)
  checkpoints.restore_base(str(tmp_path / "base"), adapted)
  toks = jax.random.randint(jax.random.key(0), (1, 5), 0, cfg.vocab_size)
  np.testing.assert_allclose(adapted(toks), models.build_model(cfg)(toks), atol=1e-6)


def test_float32_base_checkpoint_loads_into_a_bfloat16_base(tmp_path):
  """param_dtype="bfloat16" holds the frozen base in bfloat16 (adapters stay
  float32) whatever the stored dtype; the values are the stored ones, cast."""
  from mode_jax.models import pretrained
  cfg = models.get_config("tiny")
  f32 = models.build_model(cfg, seed=1)
  checkpoints.save_base(str(tmp_path / "base"), f32, source="test")
  bf16 = cfg.replace(param_dtype="bfloat16")
  model = pretrained.from_pretrained(str(tmp_path / "base"), adapters.AdapterConfig(kind="lora"),
                                     model=bf16)
  _, params, _, frozen = trainer.split_model(model)
  assert {v.dtype for v in jax.tree.leaves(frozen)} == {jax.numpy.dtype("bfloat16")}
  assert {v.dtype for v in jax.tree.leaves(params)} == {jax.numpy.dtype("float32")}
  want = f32.layers[0].mlp.up.kernel.get_value().astype(jax.numpy.bfloat16)
  np.testing.assert_array_equal(model.layers[0].mlp.up.kernel.get_value(), want)


@pytest.mark.parametrize("batch,micro", [(12, 1), (16, 4), (15, 1)])
def test_batch_that_cannot_split_over_the_mesh_fails_at_start_up(tmp_path, batch, micro):
  """Never a silent replication: a micro-batch must split over the 8 data-parallel
  devices; the error names BATCH_SIZE, the micro-batches and the mesh, before
  any data or model is built."""
  with pytest.raises(ValueError, match=rf"BATCH_SIZE={batch} with micro_batches={micro} .*"
                                       r"8 data-parallel devices .*data=8 x fsdp=1 x model=1"):
    _train(str(tmp_path / "run"), str(tmp_path / "cache"), 1,
           [f"BATCH_SIZE = {batch}", f"train.micro_batches = {micro}", "SNI_DIR = '/nonexistent'"])
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_console_shows_aux_loss_only_when_there_is_one(runs, tmp_path, capsys):
  # Dense routing (the shared run's console): no auxiliary loss to show.
  line = [l for l in runs["console"].splitlines() if l.startswith("[step 1]")][0]
  assert "loss=" in line and "aux_loss" not in line
  _train(str(tmp_path / "topk"), runs["cache"], 1,
         ["adapters.AdapterConfig.top_k = 2", "adapters.AdapterConfig.aux_loss_weight = 0.01"])
  line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[step 1]")][0]
  assert "aux_loss=" in line
