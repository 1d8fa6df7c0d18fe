"""Every shipped gin file parses, resolves and names what the paper ran."""

import glob
import os
import re

import gin
import pytest

from mode_jax import adapters
from mode_jax import experiment
from mode_jax import launch
from mode_jax import models
from mode_jax.experiments import backends
from mode_jax.experiments import presets

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MAIN = {"main_lora64": ("lora", 64, 1, "56.11"), "main_molora16x4": ("molora", 4, 16, "57.77"),
        "main_molora_sd16x4": ("molora_sd", 4, 16, "58.28"),
        "main_mode16x4": ("mode", 4, 16, "60.00"), "main_mode6x4": ("mode", 4, 6, "60.91")}


@pytest.mark.parametrize("name", sorted(MAIN))
def test_main_table_experiments(name):
  launch.parse_gin([f"experiments/{name}.gin"], ["MODEL_DIR = 'x'", "SNI_DIR = 'y'"])
  kind, rank, experts, rouge = MAIN[name]
  acfg = launch.query("train.adapter")
  assert (acfg.kind, acfg.rank, acfg.num_experts) == (kind, rank, experts)
  cfg = experiment.model_config(launch.query("train.model"))
  assert cfg.non_embedding_params() == 1_981_884_416
  assert launch.query("train.train_steps") == 20000
  assert launch.query("train.batch_size") == 128
  lengths = launch.query("train.task_feature_lengths")
  assert lengths["inputs"] + lengths["targets"] == 1024
  opt = launch.query("train.optimizer")
  assert (opt.name, opt.learning_rate) == ("adafactor", 1e-3)
  header = open(os.path.join(CONFIGS, "experiments", f"{name}.gin")).read()
  assert "python -m mode_jax.train" in header and rouge in header and "Hardware" in header
  assert adapters.count_params(cfg, acfg)["trainable"] > 0


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "experiments", "*.gin"))))
def test_every_experiment_file_says_how_to_run_it(path):
  text = open(path).read()
  assert "python -m mode_jax" in text or "python scripts/" in text, path


@pytest.mark.parametrize("kind", adapters.registry.names())
def test_adapter_files_bind_the_kind(kind):
  """Every registered kind has configs/adapters/<kind>.gin, which binds it and
  defines exactly the macros its registry entry declares."""
  path = os.path.join(CONFIGS, "adapters", f"{kind}.gin")
  macros = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", open(path).read(), re.M)) - {"ADAPTER"}
  assert macros == set(adapters.registry.get(kind).gin_macros), path
  launch.parse_gin(["models/tiny.gin", f"adapters/{kind}.gin", "runs/finetune.gin"],
                   ["MODEL_DIR = 'x'", "SNI_DIR = 'y'", "RANK = 8", "TRAIN_STEPS = 1",
                    "BATCH_SIZE = 1", "INPUT_LENGTH = 8",
                    "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}"])
  acfg = launch.query("train.adapter")
  assert acfg.kind == kind and acfg.rank == 8


PAPER = "paper_gemma_2b"


@pytest.mark.parametrize("name", sorted(MAIN) + [PAPER])
def test_paper_configs_name_their_topology_and_split_over_it(name):
  """The header's `# Topology:` is a known TPU slice (what mode_jax.aot and
  benchmarks/aot_configs.py compile for) and each micro-batch and evaluation
  batch splits over its chips (FSDP over all of them, no tensor parallelism)."""
  from mode_jax import aot
  path = os.path.join(CONFIGS, "experiments", f"{name}.gin")
  topology = re.search(r"^# Topology: (\S+)$", open(path).read(), re.M).group(1)
  _, chips = aot.parse_topology(topology)
  extra = ["adapters/mode.gin"] if name == PAPER else []  # each point adds its adapter
  launch.parse_gin([f"experiments/{name}.gin"] + extra, ["MODEL_DIR = 'x'", "SNI_DIR = 'y'"])
  mesh = launch.query("train.mesh")
  assert (mesh.data, mesh.fsdp, mesh.model) == (1, -1, 1)
  micro = launch.query("train.micro_batches")
  assert (launch.query("train.batch_size") // micro) % chips == 0
  for field in ("evaluate.batch_size", "train.eval_batch_size"):
    assert launch.query(field) % chips == 0, field
  assert experiment.model_config(launch.query("train.model")).param_dtype == "bfloat16"


def _main_file(point) -> str:
  if point.method == "lora":
    return f"main_lora{point.rank}"
  return f"main_{point.method}{point.experts}x{point.rank}"


@pytest.mark.parametrize("point", presets.expand("main_table"), ids=lambda p: p.name)
def test_sweep_main_table_point_is_its_main_file(point):
  """One paper run, one config: the sweep's job for a main_table point (the
  shared paper file, the adapter file and the point's bindings) and the
  main-table file of that row give the same gin config, binding for binding."""
  job = backends.make_job(point, "/runs", presets.PAPER_GIN)
  assert job.gin_files == (f"experiments/{PAPER}.gin", f"adapters/{point.method}.gin")
  launch.parse_gin(list(job.gin_files), list(job.bindings) + ["SNI_DIR = 'y'"])
  swept = gin.config_str()
  launch.parse_gin([f"experiments/{_main_file(point)}.gin"],
                   [f"MODEL_DIR = '/runs/{point.name}'", "SNI_DIR = 'y'"])
  assert gin.config_str() == swept
  assert sorted(_main_file(p) for p in presets.expand("main_table")) == sorted(MAIN)


def test_main_files_are_the_paper_file_plus_an_adapter():
  """A main-table file holds no setting of its own besides the adapter's macros."""
  for name in MAIN:
    text = open(os.path.join(CONFIGS, "experiments", f"{name}.gin")).read()
    body = [l for l in text.splitlines() if l.strip() and not l.startswith("#")]
    assert body[0] == f"include 'experiments/{PAPER}.gin'", name
    assert re.fullmatch(r"include 'adapters/\w+\.gin'", body[1]), name
    assert all(re.fullmatch(r"(RANK|EXPERTS|EXPERT_RANK) = \d+", l) for l in body[2:]), name


@pytest.mark.parametrize("name", ["gemma_2b", "gemma_2b_hf", "gemma_7b"])
def test_model_files_take_their_shapes_from_python(name):
  """configs/models/<name>.gin names the registry's config and sets only how it
  runs (dtypes, scan, remat): its shapes are models.get_config(name)'s."""
  text = open(os.path.join(CONFIGS, "models", f"{name}.gin")).read()
  bound = set(re.findall(r"^models\.named_config\.(\w+)\s*=", text, re.M))
  assert bound == {"name", "dtype", "param_dtype", "scan_layers", "remat_policy"}, bound
  assert "ModelConfig" not in text
  launch.parse_gin([f"models/{name}.gin", "adapters/lora.gin", "runs/finetune.gin"],
                   ["MODEL_DIR = 'x'", "SNI_DIR = 'y'", "TRAIN_STEPS = 1", "BATCH_SIZE = 1",
                    "INPUT_LENGTH = 8", "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}"])
  cfg = experiment.model_config(launch.query("train.model"))
  assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "bfloat16")
  assert cfg == models.get_config(name).replace(
      dtype=cfg.dtype, param_dtype=cfg.param_dtype, scan_layers=cfg.scan_layers,
      remat_policy=cfg.remat_policy)
  assert cfg.vocab_size == (256_000 if name.endswith("_hf") else 256_128)


def test_scan_and_remat_are_set_from_gin():
  launch.parse_gin(["models/gemma_2b.gin", "adapters/mode.gin", "runs/finetune.gin"],
                   ["MODEL_DIR = 'x'", "SNI_DIR = 'y'", "TRAIN_STEPS = 1", "BATCH_SIZE = 1",
                    "INPUT_LENGTH = 8", "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}",
                    "models.named_config.scan_layers = True",
                    "models.named_config.remat_policy = 'save_dots'"])
  cfg = experiment.model_config(launch.query("train.model"))
  assert cfg.scan_layers and cfg.remat_policy == "save_dots"
  assert cfg.replace(scan_layers=False, remat_policy="none", dtype="float32",
                     param_dtype="float32") == models.get_config("gemma_2b")


def test_named_config_keeps_shapes_and_names_bad_values():
  cfg = models.named_config("gemma_7b", num_layers=2, remat_policy="full")
  assert cfg == models.get_config("gemma_7b").replace(num_layers=2, remat_policy="full")
  with pytest.raises(ValueError, match="unknown model config 'gemma_3b'"):
    models.named_config("gemma_3b")
  with pytest.raises(ValueError, match="remat_policy='most'"):
    models.named_config("gemma_2b", remat_policy="most")
  with pytest.raises(SystemExit, match="vocab_size"):  # shapes are not gin settings
    launch.parse_gin(["models/gemma_2b.gin"], ["models.named_config.vocab_size = 10"])
