"""The paper's run composes at full scale: Gemma 2B + MoDE 16x4, batch 128 x 1024.

Lowered (traced and partitioned, never compiled or materialised) on an FSDP
mesh of the 8 fake devices, so shape or sharding mistakes at the real sizes
fail here rather than on a TPU pod.
"""

import jax
import jax.numpy as jnp
import pytest

from mode_jax import adapters
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
