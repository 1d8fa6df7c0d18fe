"""Scanned and rematerialised layers give what the Python loop gives.

Every registered adapter kind (`registry.examples()`), on a tiny Gemma 2
style model (alternating local / global attention, post-norms, soft-caps):
logits, the train step's loss, auxiliary loss, routing statistics, updated
parameters and balancing biases, and greedy decoding are equal (float32,
tight tolerance) looped vs scanned, with and without rematerialisation,
sharded or not. Also: stacked layouts, base and run checkpoints, and a
compiled program that does not grow with depth.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import checkpoints
from mode_jax import decoding
from mode_jax import models
from mode_jax import optim
from mode_jax import sharding
from mode_jax import trainer
from mode_jax.adapters import registry
from mode_jax.models import stacking

EXAMPLES = registry.examples()
IDS = [f"{k}-{i}" for i, (k, _) in enumerate(EXAMPLES)]
TOL = dict(rtol=2e-5, atol=2e-5)
CFG = models.get_config("tiny").replace(
    num_layers=2, attention_types=("local", "global"), sliding_window=3, post_norms=True,
    attn_logit_softcap=50.0, final_logit_softcap=30.0, query_pre_attn_scalar=16)


def _model(kw, scan, remat="none", seed=0, mesh=None):
  acfg = adapters.AdapterConfig(**{**kw, "targets": ("q", "v", "down"), "b_init_scale": 0.1,
                                   "router_init_scale": 0.5})
  cfg = CFG.replace(scan_layers=scan, remat_policy=remat)
  if mesh is not None:
    return models.build_sharded(cfg, acfg, mesh, seed=seed)
  return models.build_model(cfg, acfg, seed=seed)


def _batch(b=4, l=8, seed=0):
  toks = np.asarray(jax.random.randint(jax.random.key(seed), (b, l + 1), 1, CFG.vocab_size))
  return {"decoder_input_tokens": jnp.asarray(toks[:, :-1]),
          "decoder_target_tokens": jnp.asarray(toks[:, 1:]),
          "decoder_loss_weights": jnp.ones((b, l), jnp.float32)}


def _looped(tree):
  """A state (or train state dict) in the looped layout, as {path: array}."""
  if isinstance(tree, dict):
    return {k: _looped(v) for k, v in tree.items() if isinstance(v, nnx.State)}
  tree = stacking.looped_state(tree, CFG.num_layers)
  return {p: np.asarray(v.get_value()) for p, v in tree.flat_state()}


def _step(model, mesh=None):
  graphdef, params, astate, frozen = trainer.split_model(model)
  # Plain SGD with rate 1: the new parameters are p - g, so comparing them
  # compares the gradients themselves (Adam would amplify rounding).
  tx, sched = optax.sgd(1.0), lambda step: 1.0
  state = trainer.init_state(params, astate, tx)
  step = trainer.make_train_step(graphdef, tx, sched)
  batch = _batch()
  if mesh is None:
    return jax.jit(step)(state, frozen, batch)
  with sharding.use_mesh(mesh):
    return trainer.jit_train_step(step, state, frozen, batch, mesh)(state, frozen, batch)


def _logits(model, toks):
  graphdef, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, toks))


def _assert_steps_equal(got, want):
  (new_g, m_g), (new_w, m_w) = got, want
  for k in ("loss", "aux_loss", "grad_norm"):
    assert float(m_g[k]) == pytest.approx(float(m_w[k]), rel=2e-5, abs=1e-7), k
  assert set(m_g["routing"]) == set(m_w["routing"])
  for k in m_w["routing"]:
    np.testing.assert_allclose(m_g["routing"][k], m_w["routing"][k], err_msg=k, **TOL)
  g, w = _looped(new_g), _looped(new_w)
  for part in ("params", "adapter_state"):
    assert set(g[part]) == set(w[part])
    for path in w[part]:
      np.testing.assert_allclose(g[part][path], w[part][path], err_msg=str(path), **TOL)


def test_scanned_parameters_are_the_looped_ones_stacked():
  kw = dict(kind="flylora", rank=8, top_k=3)
  loop, scan = _model(kw, False), _model(kw, True)
  assert scan.layers.attn.q.kernel.get_metadata("logical_axes")[0] == "layers"
  assert scan.layers.attn.q.adapter.bias.get_metadata("rate") == 1e-3
  loop_state, scan_state = nnx.state(loop), nnx.state(scan)
  assert stacking.layout_of(loop_state) == "looped" and stacking.layout_of(scan_state) == "scanned"
  jax.tree.map(np.testing.assert_array_equal, stacking.stack(loop_state), scan_state)
  back = stacking.unstack(scan_state, CFG.num_layers)
  jax.tree.map(np.testing.assert_array_equal, back, loop_state)
  assert nnx.graphdef(nnx.merge(nnx.graphdef(loop), back)) == nnx.graphdef(loop)


# Each kind's scanned model runs under one remat policy, cycling through all.
POLICIES = ("full", "none", "save_dots", "save_all_dots")


@pytest.mark.parametrize("i", range(len(EXAMPLES)), ids=IDS)
def test_scan_and_remat_equal_the_loop(i):
  """Loss, aux loss, statistics, gradients (through the update) and biases."""
  kind, kw = EXAMPLES[i]
  want = _step(_model(kw, False))
  if registry.get(kind).balancing:  # the biases moved, by the same rule
    assert any(np.abs(v).max() > 0 for p, v in _looped(want[0])["adapter_state"].items()
               if p[-1] == "bias")
  if kw.get("aux_loss_weight"):
    assert float(want[1]["aux_loss"]) > 0
  _assert_steps_equal(_step(_model(kw, True, remat=POLICIES[i % len(POLICIES)])), want)


def test_sharded_scan_equals_unsharded_rematerialised_loop():
  kw = dict(kind="smora", rank=8, top_k=3)
  mesh = sharding.make_mesh(data=2, model=4)
  scan = _model(kw, True, remat="save_dots", mesh=mesh)
  kernel = scan.layers.mlp.gate.kernel[...]
  assert kernel.sharding.spec[0] is None and kernel.sharding.spec[-1] == "model"
  _assert_steps_equal(_step(scan, mesh), _step(_model(kw, False, remat="full")))


def test_greedy_decoding_and_the_stacked_cache():
  kw = dict(kind="mode", rank=4, num_experts=3, expert_rank=2)
  loop, scan = _model(kw, False), _model(kw, True)
  toks = _batch()["decoder_input_tokens"]
  np.testing.assert_allclose(_logits(scan, toks), _logits(loop, toks), **TOL)
  cache = scan.init_cache(2, 7)
  assert cache["layers"]["k"].shape == (CFG.num_layers, 2, 7, CFG.num_kv_heads, CFG.head_dim)
  toks, mask = decoding.left_pad([[5, 6, 7], [8, 9]], 4)
  out = []
  for model in (loop, scan):
    graphdef, state = nnx.split(model)
    decode = decoding.make_decode_fn(graphdef, max_decode_len=6, eos_id=1)
    out.append(np.asarray(decode((state,), jnp.asarray(toks), jnp.asarray(mask))))
  np.testing.assert_array_equal(out[1], out[0])


def test_base_checkpoint_loads_into_either_layout(tmp_path):
  cfg = CFG.replace(scan_layers=True)
  scan = models.build_model(cfg, None, seed=3)
  checkpoints.save_base(str(tmp_path / "base"), scan)  # written looped
  assert not checkpoints.read_base_config(str(tmp_path / "base")).scan_layers
  toks = _batch()["decoder_input_tokens"]
  want = _logits(scan, toks)
  for scan_layers in (False, True):
    model = models.abstract_model(cfg.replace(scan_layers=scan_layers))
    checkpoints.restore_base(str(tmp_path / "base"), model)
    np.testing.assert_allclose(_logits(model, toks), want, **TOL)


def test_run_checkpoint_names_its_layout_and_refuses_the_other(tmp_path):
  kw = dict(kind="lora", rank=4)
  states = {}
  for scan in (False, True):
    _, params, astate, _ = trainer.split_model(_model(kw, scan))
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(), 10)
    states[scan] = trainer.init_state(params, astate, tx)
  ck = checkpoints.RunCheckpointer(str(tmp_path), async_save=False)
  ck.save(1, states[True], None, force=True)
  ck.wait()
  got = ck.restore_adapters(checkpoints.abstract_like(
      {k: v for k, v in states[True].items() if k != "opt_state"}))
  assert stacking.layout_of(got["params"]) == "scanned"
  with pytest.raises(ValueError, match="holds scanned layers but the model has looped"):
    ck.restore(checkpoints.abstract_like(states[False]), None)
  ck.close()


def test_compiled_program_does_not_grow_with_depth():
  """Lowered train-step text: the scanned stack's is the same size at 2 and 8 layers."""
  kw = dict(kind="mode", rank=4, num_experts=3, expert_rank=2)
  sizes = {}
  for scan in (False, True):
    for layers in (2, 8):
      acfg = adapters.AdapterConfig(**kw)
      model = models.abstract_model(CFG.replace(num_layers=layers, scan_layers=scan,
                                                remat_policy="full"), acfg)
      graphdef, params, astate, frozen = trainer.split_model(model)
      tx, sched = optim.make_optimizer(optim.OptimizerConfig(), 10)
      state = jax.eval_shape(lambda p, a: trainer.init_state(p, a, tx), params, astate)
      step = trainer.make_train_step(graphdef, tx, sched)
      batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batch())
      sizes[scan, layers] = len(jax.jit(step).lower(state, frozen, batch).as_text())
  # What still grows is the per-layer logging of routing statistics.
  grow_scan, grow_loop = sizes[True, 8] - sizes[True, 2], sizes[False, 8] - sizes[False, 2]
  assert grow_scan < 0.1 * grow_loop and sizes[False, 8] > 2 * sizes[False, 2], sizes
