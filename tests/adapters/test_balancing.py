"""Balancing biases (FlyLoRA, SMoRA) and MoDE's balancing loss in training.

The bias rule d_i += u * sign(mean(c) - c_i) on a hand-built batch; biases
untouched by forward, evaluation and decoding; the jitted train step of a
tiny model (adapters on q and v) that updates them, keeps them in
`adapter_state` and carries them through a checkpoint; and the MoDE top-k
loss reaching the optimizer.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import checkpoints
from mode_jax import decoding
from mode_jax import models
from mode_jax import optim
from mode_jax import sharding
from mode_jax import trainer
from mode_jax.adapters import balancing
from mode_jax.adapters import routing
from mode_jax.layers import linear

# --- the rule on a hand-built batch ---------------------------------------

# P = R = 4 and an identity projection, so the scores are the tokens (FlyLoRA:
# h = x; SMoRA: s = sigmoid(x), same order). k = 2, a small initial bias:
#   t0 [5, 1, 0, 0]   + d -> {0, 1}
#   t1 [4, 0, 3, 0]   + d -> {0, 2}
#   t2 [0, 2, 0, 1]   + d -> {1, 3}
#   t3 [6, 0, .5, -1] + d -> {0, 2}
# counts c = [3, 2, 2, 1], mean 2, sign(mean - c) = [-1, 0, 0, +1].
X_TP = np.array([[5, 1, 0, 0], [4, 0, 3, 0], [0, 2, 0, 1], [6, 0, 0.5, -1]], np.float32)
D0 = np.array([0.0, 0.02, -0.01, 0.03], np.float32)
COUNTS = np.array([3, 2, 2, 1], np.float32)
SIGN = np.array([-1, 0, 0, 1], np.float32)


class _Layer(nnx.Module):
  """One adapted projection at path `q`, as in a model (`q/adapter/bias`)."""

  def __init__(self, cfg):
    self.q = linear.Projection((4,), (3,), ("embed",), ("heads",), rngs=nnx.Rngs(0),
                               adapter=cfg)


@pytest.mark.parametrize("kind,rate", [("flylora", 1e-3), ("smora", 1e-5), ("flylora", 0.25)])
def test_bias_update_follows_the_rule(kind, rate):
  cfg = adapters.AdapterConfig(kind=kind, rank=4, top_k=2, bias_rate=rate)
  layer = _Layer(cfg)
  adapter = layer.q.adapter
  eye = jnp.eye(4, dtype=jnp.float32)
  if kind == "flylora":
    adapter.lora_a[...] = eye
  else:
    adapter.router[...] = eye
  adapter.bias[...] = jnp.asarray(D0)
  graphdef, state = nnx.split(layer)

  @jax.jit
  def forward(state, x):
    layer = nnx.merge(graphdef, state)
    layer.q(x)
    return routing.pop(layer)

  stats = forward(state, jnp.asarray(X_TP))
  assert set(stats) == {"q/adapter"}  # the path of the module that holds the bias
  np.testing.assert_array_equal(np.asarray(stats["q/adapter"]["counts"]), COUNTS)
  astate = nnx.state(layer, adapters.AdapterState)
  new = balancing.update(astate, stats)
  want = D0 + np.float32(rate) * SIGN
  np.testing.assert_allclose(np.asarray(new["q"]["adapter"]["bias"][...]), want,
                             rtol=0, atol=1e-9)
  # The rest of the adapter state is left as it was; the module too.
  for path, v in astate.flat_state():
    if path[-1] != "bias":
      np.testing.assert_array_equal(np.asarray(v.get_value()),
                                    np.asarray(dict(new.flat_state())[path].get_value()))
  np.testing.assert_array_equal(np.asarray(adapter.bias[...]), D0)
  # No stats (evaluation) or stats without counts: the identity.
  assert balancing.update(astate, {}) is astate
  same = balancing.update(astate, {"q/adapter": {"entropy": jnp.zeros(())}})
  np.testing.assert_array_equal(np.asarray(same["q"]["adapter"]["bias"][...]), D0)


def test_sign_rule_by_hand():
  d = balancing.sign_rule(jnp.asarray([0.5, 0.0, -0.5]), jnp.asarray([4.0, 1.0, 1.0]), 0.1)
  # mean 2: signs [-1, +1, +1]
  np.testing.assert_allclose(np.asarray(d), [0.4, 0.1, -0.4], rtol=1e-6)


# --- the tiny model: forward, eval, decoding, train step -------------------

KINDS = {
    "flylora": dict(kind="flylora", rank=8, top_k=2, alpha=16.0, targets=("q", "v")),
    "smora": dict(kind="smora", rank=8, top_k=2, alpha=4.0, targets=("q", "v"),
                  router_init_scale=0.5),
}
NAMES = [f"layers/{i}/attn/{t}" for i in range(2) for t in ("q", "v")]


def _batch(vocab, b=4, l=8, seed=0):
  toks = np.asarray(jax.random.randint(jax.random.key(seed), (b, l + 1), 1, vocab))
  return {"decoder_input_tokens": jnp.asarray(toks[:, :-1]),
          "decoder_target_tokens": jnp.asarray(toks[:, 1:]),
          "decoder_loss_weights": jnp.ones((b, l), jnp.float32)}


def _biases(astate):
  return {"/".join(map(str, p[:-2])): np.asarray(v.get_value())
          for p, v in astate.flat_state() if p[-1] == "bias"}


def _model(kind, seed=0, **kw):
  acfg = adapters.AdapterConfig(**{**KINDS[kind], "b_init_scale": 0.1, **kw})
  return models.build_model(models.get_config("tiny"), acfg, seed=seed)


def _set_biases(model, seed):
  """Small random biases, so that the rule's tie case (sign 0) is rare."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, adapters.AdapterState)
  for path, v in state.flat_state():
    if path[-1] == "bias":
      v.set_value(jnp.asarray(1e-3 * rng.normal(size=v.shape), jnp.float32))
  nnx.update(model, state)


@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_eval_and_decoding_leave_the_bias_alone(kind):
  model = _model(kind)
  _set_biases(model, 1)
  graphdef, params, astate, frozen = trainer.split_model(model)
  before = _biases(astate)
  assert set(before) == set(NAMES)
  batch = _batch(model.config.vocab_size)
  model(batch["decoder_input_tokens"])  # a plain (eager) call sows statistics
  assert set(routing.by_matrix(routing.pop(model))) == set(NAMES)
  logits = jax.jit(lambda s, t: nnx.merge(graphdef, *s)(t))((params, astate, frozen),
                                                            batch["decoder_input_tokens"])
  assert logits.shape[:2] == (4, 8)
  decode = decoding.make_decode_fn(graphdef, max_decode_len=3, eos_id=1)
  toks, mask = decoding.left_pad([[5, 6, 7], [8, 9]], 4)
  decode((params, astate, frozen), jnp.asarray(toks), jnp.asarray(mask))
  for now in (_biases(nnx.state(model, adapters.AdapterState)), _biases(astate)):
    for name in before:
      np.testing.assert_array_equal(now[name], before[name])


def _train_step(model, micro_batches=1, opt=None, mesh=None):
  graphdef, params, astate, frozen = trainer.split_model(model)
  tx, sched = optim.make_optimizer(opt or optim.OptimizerConfig(learning_rate=0.01), 10)
  state = trainer.init_state(params, astate, tx)
  step = trainer.make_train_step(graphdef, tx, sched, micro_batches=micro_batches)
  return graphdef, state, frozen, step


def _counts(graphdef, state, frozen, batch):
  @jax.jit
  def f(params, astate, frozen, tokens):
    model = nnx.merge(graphdef, params, astate, frozen)
    model(tokens)
    return routing.by_matrix(routing.pop(model))

  return f(state["params"], state["adapter_state"], frozen, batch["decoder_input_tokens"])


@pytest.mark.parametrize("kind", list(KINDS))
def test_train_step_updates_the_bias_by_the_rule(kind):
  """End to end: jit_train_step (sharded, donated) on the tiny model, q and v adapted."""
  model = _model(kind)
  _set_biases(model, 2)
  graphdef, state, frozen, step = _train_step(model)
  batch = _batch(model.config.vocab_size)
  stats = _counts(graphdef, state, frozen, batch)
  rate = adapters.AdapterConfig(**KINDS[kind]).bias_rate
  before = _biases(state["adapter_state"])
  want = {n: np.asarray(balancing.sign_rule(jnp.asarray(before[n]), stats[n]["counts"], rate))
          for n in NAMES}
  old_state = {p: np.asarray(v.get_value()) for p, v in state["adapter_state"].flat_state()}
  old_b = np.asarray(state["params"]["layers"][0]["attn"]["q"]["adapter"]["lora_b"][...])
  mesh = sharding.make_mesh(data=4, model=2)
  with sharding.use_mesh(mesh):
    jitted = trainer.jit_train_step(step, state, frozen, batch, mesh)
    new, metrics = jitted(state, frozen, batch)  # `state` is donated
  assert bool(metrics["finite"]) and float(metrics["aux_loss"]) == 0.0
  assert set(metrics["routing"]) >= {f"{n}/load_max" for n in NAMES}
  after = _biases(new["adapter_state"])
  assert set(after) == set(NAMES)
  for n in NAMES:
    assert np.abs(after[n] - before[n]).max() > 0, n  # moved...
    np.testing.assert_allclose(after[n], want[n], rtol=0, atol=1e-9)  # ...by the rule
  # Everything else in the adapter state (FlyLoRA's lora_a and seed) is as it was.
  for path, v in new["adapter_state"].flat_state():
    if path[-1] != "bias":
      np.testing.assert_array_equal(np.asarray(v.get_value()), old_state[path])
  assert "bias" not in {p[-1] for p, _ in new["params"].flat_state()}
  # lora_b trained; for FlyLoRA it is the only trained weight.
  new_b = np.asarray(new["params"]["layers"][0]["attn"]["q"]["adapter"]["lora_b"][...])
  assert np.abs(new_b - old_b).max() > 0
  trained = {p[-1] for p, _ in new["params"].flat_state()}
  assert trained == ({"lora_b"} if kind == "flylora" else {"lora_a", "lora_b", "router"})


def test_micro_batches_sum_counts_and_give_the_same_bias():
  model = _model("smora", targets=("q",))
  _set_biases(model, 3)
  batch = _batch(model.config.vocab_size, b=4)
  results = []
  for a in (1, 2):
    graphdef, state, frozen, step = _train_step(model, micro_batches=a)
    new, _ = jax.jit(step)(state, frozen, batch)
    results.append(_biases(new["adapter_state"]))
  stats = _counts(graphdef, state, frozen, batch)
  for n in results[0]:
    want = balancing.sign_rule(jnp.asarray(_biases(state["adapter_state"])[n]),
                               stats[n]["counts"], 1e-5)
    np.testing.assert_allclose(results[0][n], np.asarray(want), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(results[0][n], results[1][n])


def test_non_finite_step_keeps_the_bias():
  model = _model("flylora")
  _set_biases(model, 4)
  graphdef, state, frozen, step = _train_step(model)
  before = _biases(state["adapter_state"])
  batch = _batch(model.config.vocab_size)
  bad = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan) if x.dtype == jnp.float32 else x,
                     state["params"])
  new, m = jax.jit(step)(dict(state, params=bad), frozen, batch)
  assert not bool(m["finite"])
  for n, v in _biases(new["adapter_state"]).items():
    np.testing.assert_array_equal(v, before[n])


def test_checkpoint_round_trip_reproduces_outputs(tmp_path):
  """The adapter state (projection, seed, bias) is saved and restored exactly."""
  model = _model("flylora", seed=0)
  _set_biases(model, 5)
  graphdef, params, astate, frozen = trainer.split_model(model)
  tokens = _batch(model.config.vocab_size)["decoder_input_tokens"]
  want = np.asarray(model(tokens))
  checkpoints.save_adapters(str(tmp_path / "adapters"),
                            {"params": params, "adapter_state": astate})
  other = _model("flylora", seed=1)  # another projection and lora_b; the same base
  g2, p2, a2, f2 = trainer.split_model(other)
  assert not np.array_equal(
      np.asarray(a2["layers"][0]["attn"]["q"]["adapter"]["lora_a"][...]),
      np.asarray(astate["layers"][0]["attn"]["q"]["adapter"]["lora_a"][...]))
  restored = checkpoints.restore_adapters(
      str(tmp_path / "adapters"), checkpoints.abstract_like({"params": p2, "adapter_state": a2}))
  got = np.asarray(nnx.merge(graphdef, restored["params"], restored["adapter_state"], frozen)(
      tokens))
  np.testing.assert_array_equal(got, want)
  assert _biases(restored["adapter_state"]).keys() == _biases(astate).keys()
  for n, v in _biases(restored["adapter_state"]).items():
    np.testing.assert_array_equal(v, _biases(astate)[n])


# --- MoDE top-k: the balancing loss reaches the optimizer ------------------


def test_mode_aux_loss_is_added_to_the_loss_and_logged():
  cfg = models.get_config("tiny")
  batch = _batch(cfg.vocab_size)
  opt = optim.OptimizerConfig(name="adamw", learning_rate=0.01, clip_norm=None)
  out = {}
  for w in (0.0, 0.5):
    acfg = adapters.AdapterConfig(kind="mode", rank=4, num_experts=4, top_k=2,
                                  aux_loss_weight=w, targets=("q", "v"), b_init_scale=0.1,
                                  router_init_scale=0.5)
    model = models.build_model(cfg, acfg)
    graphdef, state, frozen, step = _train_step(model, opt=opt)
    stats = _counts(graphdef, state, frozen, batch)
    out[w] = (jax.jit(step)(state, frozen, batch), stats)
  (new0, m0), _ = out[0.0]
  (new1, m1), stats = out[0.5]
  assert float(m0["aux_loss"]) == 0.0 and "aux_loss" not in m0["routing"]
  want = 0.5 * sum(float(stats[n]["aux_loss"]) for n in NAMES)
  assert want > 0
  assert float(m1["aux_loss"]) == pytest.approx(want, rel=1e-5)
  assert float(m1["routing"]["aux_loss"]) == pytest.approx(want, rel=1e-5)
  assert {f"{n}/aux_loss" for n in NAMES} <= set(m1["routing"])
  assert float(m1["loss"]) == pytest.approx(float(m0["loss"]), rel=1e-6)  # cross-entropy alone
  # The loss moved every router. The last layer's lora_a / lora_b feed no
  # router, so they get no aux gradient (earlier layers' do: they shape the
  # inputs of later routers).
  params0 = dict(new0["params"].flat_state())
  for path, v in new1["params"].flat_state():
    a, b = np.asarray(v.get_value()), np.asarray(params0[path].get_value())
    if path[-1] == "router":
      assert np.abs(a - b).max() > 1e-6, path
    elif path[1] == cfg.num_layers - 1:
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=str(path))
