"""The paper's run composes at full scale: Gemma 2B + MoDE 16x4, batch 128 x 1024.

Lowered (traced and partitioned, never compiled or materialised) on an FSDP
mesh of the 8 fake devices, so shape or sharding mistakes at the real sizes
fail here rather than on a TPU pod.
"""

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import pytest

from mode_jax import adapters
from mode_jax import aot
from mode_jax import models
from mode_jax import optim
from mode_jax import sharding
from mode_jax import trainer


@pytest.mark.parametrize("layout", [dict(data=1, fsdp=8), dict(data=2, fsdp=2, model=2)])
def test_gemma_2b_mode_train_step_lowers(layout):
  cfg = models.get_config("gemma_2b").replace(dtype="bfloat16")
  acfg = adapters.AdapterConfig(kind="mode", rank=4, num_experts=16)
  graphdef, params, astate, frozen = trainer.split_model(models.abstract_model(cfg, acfg))
  tx, sched = optim.make_optimizer(optim.OptimizerConfig(), 20_000)
  state = jax.eval_shape(lambda p, a: trainer.init_state(p, a, tx), params, astate)
  batch = {k: jax.ShapeDtypeStruct((128, 1024), jnp.float32 if "weights" in k else jnp.int32)
           for k in trainer.BATCH_KEYS}
  mesh = sharding.make_mesh(**layout)
  with sharding.use_mesh(mesh):
    step = trainer.jit_train_step(trainer.make_train_step(graphdef, tx, sched, micro_batches=4),
                                  state, frozen, batch, mesh)
    new_state, metrics = jax.eval_shape(step, state, frozen, batch)
    lowered = step.lower(state, frozen, batch)
  assert metrics["loss"].shape == ()
  n_trainable = sum(x.size for x in jax.tree.leaves(new_state["params"]))
  assert n_trainable == adapters.count_params(cfg, acfg)["trainable"] == 15_335_424
  # The embedding (the largest base tensor) is split over the mesh, not replicated.
  emb = frozen["embedder"]["input_embedding"]
  spec = sharding.named_sharding(emb.get_metadata()["logical_axes"], emb.shape, mesh).spec
  assert any(a is not None for a in spec)
  # The train state is donated (aliased to outputs); the frozen base is not.
  main = next(l for l in lowered.as_text().splitlines() if "func.func public @main" in l)
  args = main.split("%arg")[1:]
  n_state, n_frozen = len(jax.tree.leaves(state)), len(jax.tree.leaves(frozen))
  donated = ["tf.aliasing_output" in a or "jax.buffer_donor" in a for a in args]
  assert sum(donated[:n_state]) >= n_state - 1  # all but possibly a scalar
  assert not any(donated[n_state:n_state + n_frozen])


# --- Compiled by the TPU compiler (libtpu) for a real topology, on this CPU. ---

_NO_LIBTPU = importlib.util.find_spec("libtpu") is None


@pytest.fixture
def libtpu():
  """libtpu must be there: a skip on a developer's machine, a failure in CI (CI=true),
  where .ci/run installs requirements-tpu.txt and a silent skip would hide it."""
  if _NO_LIBTPU:
    message = ("libtpu is not installed (pip install -r requirements-tpu.txt); "
               "the TPU compiler is what mode_jax.aot measures with")
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


@pytest.mark.slow
@pytest.mark.tpu_compile
def test_paper_config_fits_its_topology_with_headroom(libtpu, capsys):
  """main_mode16x4.gin's train step, compiled for the v5e-32 its header names,
  needs at most 90% of a chip's HBM (about 2 minutes of compiling on one core)."""
  rc = aot.main(["--gin_file=experiments/main_mode16x4.gin", "--topology=v5e-32",
                 "--headroom=0.1", "--no_decode"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "train step: fits" in out and "aot: every step fits on v5e-32" in out
  gib = float(re.search(r"fits: ([\d.]+) GiB of 15.75 GiB", out).group(1))
  assert 0 < gib <= 0.9 * 15.75


@pytest.mark.slow
@pytest.mark.tpu_compile
def test_run_that_does_not_fit_is_reported_and_exits_non_zero(libtpu, capsys):
  """Gemma 2B's float32 base and whole [8, 1024, 256128] float32 logits per chip
  (no micro-batches, no chunked loss) on a v5e-16: the TPU compiler's verdict
  is reported as not fitting, exit 1. Two layers keep the compile short."""
  rc = aot.main(["--gin_file=experiments/main_mode16x4.gin", "--topology=v5e-16",
                 "--no_decode", "--gin_bindings=models.named_config.num_layers = 2",
                 "--gin_bindings=models.named_config.param_dtype = 'float32'",
                 "--gin_bindings=train.micro_batches = 1",
                 "--gin_bindings=train.loss_chunk = 0"])
  out = capsys.readouterr().out
  assert rc == 1, out
  assert "train step: DOES NOT FIT" in out and "do(es) not fit on v5e-16" in out


def test_topology_names_and_bad_input():
  chip, n = aot.parse_topology("v5e-32")
  assert (chip.prefix, n, chip.shapes[n]) == ("v5e", 32, "4x8")
  chip, n = aot.parse_topology("v4-32")  # v4 and v5p names count cores, two per chip
  assert (chip.prefix, chip.chip_config, n, chip.shapes[n]) == ("v4", "megacore", 16, "2x2x4")
  assert "v5p-128" in aot.topology_names() and "v6e-256" in aot.topology_names()
  with pytest.raises(ValueError, match="unknown --topology 'v5e-33'; known: .*v5e-32"):
    aot.parse_topology("v5e-33")
  with pytest.raises(SystemExit, match="unknown --topology 'tpu'"):
    aot.main(["--gin_file=experiments/main_mode16x4.gin", "--topology=tpu"])


@pytest.mark.slow
@pytest.mark.tpu_compile
@pytest.mark.parametrize("kind", sorted(aot.CHIPS))
def test_hbm_per_chip_is_what_the_compiler_allows(libtpu, kind):
  """A program needing 400 GiB on one chip fails to compile; the compiler's
  message names the HBM available, which must be the table's."""
  aot.quiet_libtpu()
  name = next(n for n in aot.topology_names() if n.startswith(kind + "-"))
  dev = aot.topology_devices(name)[0]
  mesh = jax.sharding.Mesh([dev], ("x",))
  x = jax.ShapeDtypeStruct((100 * 2 ** 30,), jnp.float32,
                           sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  with pytest.raises(Exception, match=r"available HBM \((\d+\.\d+)G\)") as err:
    jax.jit(lambda a: a * 2).lower(x).compile()
  got = float(re.search(r"available HBM \((\d+\.\d+)G\)", str(err.value)).group(1))
  assert got * 2 ** 30 == pytest.approx(aot.CHIPS[kind].hbm_bytes, rel=1e-3)
