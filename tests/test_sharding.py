"""Sharded forward/backward equals unsharded; gradients only for adapters."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mode_jax import adapters
from mode_jax import losses
from mode_jax import models
from mode_jax import sharding

ADAPTER = adapters.AdapterConfig(kind="mode", rank=4, num_experts=4, expert_rank=1,
                                 targets=("q", "k", "v", "o", "gate", "up", "down"),
                                 b_init_scale=0.02)
CFG = models.get_config("tiny").replace(num_heads=4, num_kv_heads=2)


def _loss_and_grads(model, tokens):
  graphdef, trainable, rest = nnx.split(model, adapters.TRAINABLE, ...)

  def loss_fn(trainable):
    m = nnx.merge(graphdef, trainable, rest)
    logits = m(tokens[:, :-1])
    loss, _ = losses.cross_entropy(logits, tokens[:, 1:])
    return loss

  return jax.jit(jax.value_and_grad(loss_fn))(trainable)


def _flat(state):
  return {p: np.asarray(v.get_value()) for p, v in state.flat_state()}


@pytest.fixture(scope="module")
def reference():
  model = models.build_model(CFG, ADAPTER, seed=0)
  tokens = jax.random.randint(jax.random.key(1), (8, 12), 0, CFG.vocab_size)
  loss, grads = _loss_and_grads(model, tokens)
  return tokens, float(loss), _flat(grads)


@pytest.mark.parametrize("layout", [dict(data=8), dict(data=2, model=4),
                                    dict(data=2, fsdp=2, model=2), dict(data=1, fsdp=8)])
def test_sharded_matches_single_device(reference, layout):
  tokens, ref_loss, ref_grads = reference
  mesh = sharding.make_mesh(**layout)
  model = models.build_sharded(CFG, ADAPTER, mesh, seed=0)
  # The same init as the single-device model, and placed by logical axes.
  kernel = model.layers[0].mlp.gate.kernel
  assert isinstance(kernel.get_value().sharding, NamedSharding)
  if layout.get("model", 1) > 1:
    assert kernel.get_value().sharding.spec[-1] == "model"
  batch_spec = sharding.named_sharding(("batch", "length"), tokens.shape, mesh)
  with sharding.use_mesh(mesh):
    loss, grads = _loss_and_grads(model, jax.device_put(tokens, batch_spec))
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
  got = _flat(grads)
  assert got.keys() == ref_grads.keys()
  for path, g in ref_grads.items():
    np.testing.assert_allclose(got[path], g, atol=1e-6, rtol=2e-4, err_msg=str(path))


def test_gradients_exist_only_for_adapter_variables(reference):
  _, _, grads = reference
  assert grads
  assert all(p[-1] in ("lora_a", "lora_b", "router") for p in grads)
  assert any(np.abs(g).max() > 0 for g in grads.values())
  model = models.build_model(CFG, ADAPTER)
  n_trainable = sum(v.size for v in _flat(nnx.state(model, adapters.TRAINABLE)).values())
  assert n_trainable == sum(g.size for g in grads.values())


def test_logical_rules_map_and_validate():
  # batch takes data and fsdp, so embed (fsdp) stays replicated on activations.
  assert sharding.logical_to_spec(("batch", "embed")) == PartitionSpec(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("embed", "mlp")) == PartitionSpec("fsdp", "model")
  # A mesh axis is used at most once per array.
  spec = sharding.logical_to_spec(("heads", "mlp"))
  assert spec == PartitionSpec("model", None)
  with pytest.raises(ValueError, match="logical axis 'bogus'"):
    sharding.logical_to_spec(("bogus",))
  with pytest.raises(ValueError, match="unknown logical axis"):
    sharding.rules_from_overrides({"nope": None})
  with pytest.raises(ValueError, match="devices"):
    sharding.make_mesh(data=3, model=2)


def test_every_parameter_has_logical_axes():
  model = models.abstract_model(CFG, ADAPTER)
  for path, var in nnx.state(model, nnx.Param).flat_state():
    axes = var.get_metadata().get("logical_axes")
    assert axes is not None and len(axes) == len(var.shape), path


def test_decoding_batch_must_split_over_the_data_parallel_devices():
  """data=2 x fsdp=2 x model=2: the batch splits 4 ways (the model axis holds
  the same rows), so 12 decodes but 6 would be replicated and fails by name."""
  mesh = sharding.make_mesh(data=2, fsdp=2, model=2)
  sharding.check_decode_batch(12, mesh, "evaluate.batch_size")
  with pytest.raises(ValueError, match=r"evaluate.batch_size=6 does not split over the 4 "
                                       r"data-parallel devices of the mesh \(data=2 x fsdp=2 x "
                                       r"model=2.*multiple of 4"):
    sharding.check_decode_batch(6, mesh, "evaluate.batch_size")
