"""Every shipped gin file parses, resolves and names what the paper ran."""

import glob
import os
import re

import pytest

from mode_jax import adapters
from mode_jax import experiment
from mode_jax import launch

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


@pytest.mark.parametrize("name", sorted(MAIN) + ["sweep_gemma_2b"])
def test_paper_configs_name_their_topology_and_split_over_it(name):
  """The header's `# Topology:` is a known TPU slice (what mode_jax.aot and
  benchmarks/aot_configs.py compile for) and each micro-batch and evaluation
  batch splits over its chips (FSDP over all of them, no tensor parallelism)."""
  from mode_jax import aot
  path = os.path.join(CONFIGS, "experiments", f"{name}.gin")
  topology = re.search(r"^# Topology: (\S+)$", open(path).read(), re.M).group(1)
  _, chips = aot.parse_topology(topology)
  extra = ["adapters/mode.gin"] if name.startswith("sweep") else []  # the sweep adds one
  launch.parse_gin([f"experiments/{name}.gin"] + extra, ["MODEL_DIR = 'x'", "SNI_DIR = 'y'"])
  mesh = launch.query("train.mesh")
  assert (mesh.data, mesh.fsdp, mesh.model) == (1, -1, 1)
  micro = launch.query("train.micro_batches")
  assert (launch.query("train.batch_size") // micro) % chips == 0
  eval_batch = launch.query("evaluate.batch_size" if name.startswith("sweep")
                            else "train.eval_batch_size")
  assert eval_batch % chips == 0
  assert experiment.model_config(launch.query("train.model")).param_dtype == "bfloat16"


def test_scan_and_remat_are_set_from_gin():
  launch.parse_gin(["models/gemma_2b.gin", "adapters/mode.gin", "runs/finetune.gin"],
                   ["MODEL_DIR = 'x'", "SNI_DIR = 'y'", "TRAIN_STEPS = 1", "BATCH_SIZE = 1",
                    "INPUT_LENGTH = 8", "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}",
                    "models.ModelConfig.scan_layers = True",
                    "models.ModelConfig.remat_policy = 'save_dots'"])
  cfg = experiment.model_config(launch.query("train.model"))
  assert cfg.scan_layers and cfg.remat_policy == "save_dots"
