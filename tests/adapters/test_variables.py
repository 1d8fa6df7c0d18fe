"""Variable names, shapes, types and logical axes (METHODS.md table)."""

import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import sharding

P, Q, R, E = 12, 10, 4, 3
ALLOWED_AXES = {"embed", "heads", "mlp", None, "rank", "expert", "groups"}


def _expected(kind, p, in_axis, out_axis):
  """{name: (shape, logical_axes)} per METHODS.md."""
  g = R // p
  if kind == "lora":
    return {"lora_a": ((P, R), (in_axis, "rank")), "lora_b": ((R, Q), ("rank", out_axis))}
  b = ((E, R, Q), ("expert", "rank", out_axis))
  if kind == "molora":
    return {"lora_a": ((E, P, R), ("expert", in_axis, "rank")), "lora_b": b,
            "router": ((P, E), (in_axis, "expert"))}
  if kind == "molora_sd":
    return {"lora_a": ((P, R), (in_axis, "rank")), "lora_b": b,
            "router": ((P, E), (in_axis, "expert"))}
  return {"lora_a": ((P, R), (in_axis, "rank")), "lora_b": b,
          "router": ((P, g, E), (in_axis, "groups", "expert"))}


@pytest.mark.parametrize("in_axis,out_axis", [("embed", "heads"), ("heads", "embed"),
                                              ("embed", "mlp"), (None, None)])
@pytest.mark.parametrize("kind,p", [("lora", 1), ("molora", 1), ("molora_sd", 1),
                                    ("mode", 1), ("mode", 2), ("mode", R)])
def test_names_shapes_types_axes(kind, p, in_axis, out_axis):
  cfg = adapters.AdapterConfig(kind=kind, rank=R, num_experts=1 if kind == "lora" else E,
                               expert_rank=p)
  module = nnx.eval_shape(lambda: adapters.make_adapter(
      cfg, P, Q, nnx.Rngs(0), in_axis=in_axis, out_axis=out_axis))
  want = _expected(kind, p, in_axis, out_axis)
  state = nnx.state(module, adapters.AdapterParam)
  assert set(state.keys()) == set(want)
  # Every variable of the module is an AdapterParam: nothing frozen, no base.
  assert len(nnx.state(module, adapters.FROZEN_BASE)) == 0
  assert set(nnx.state(module, nnx.Param).keys()) == set(want)
  for name, (shape, axes) in want.items():
    v = getattr(module, name)
    assert type(v) is adapters.AdapterParam, name
    assert isinstance(v, nnx.LoRAParam)
    assert tuple(v.shape) == shape, name
    assert str(v.dtype) == "float32", name
    got = v.get_metadata().get("logical_axes")
    assert tuple(got) == axes, name
    assert len(got) == len(shape) and set(got) <= ALLOWED_AXES
    sharding.logical_to_spec(got)  # every name has a rule


@pytest.mark.parametrize("in_axis,out_axis", [("embed", "heads"), ("heads", "embed"),
                                              ("embed", "mlp"), (None, None)])
@pytest.mark.parametrize("kind", ["flylora", "smora"])
def test_rankwise_names_shapes_types_axes(kind, in_axis, out_axis):
  """FlyLoRA: lora_b trains; lora_a, seed, bias are AdapterState. SMoRA: bias only."""
  cfg = adapters.AdapterConfig(kind=kind, rank=R, top_k=2)
  module = nnx.eval_shape(lambda: adapters.make_adapter(
      cfg, P, Q, nnx.Rngs(0), in_axis=in_axis, out_axis=out_axis))
  trained = {"lora_b": ((R, Q), ("rank", out_axis))}
  state = {"bias": ((R,), ("rank",))}
  if kind == "smora":
    trained.update(lora_a=((P, R), (in_axis, "rank")), router=((P, R), (in_axis, "rank")))
  else:
    state.update(lora_a=((P, R), (in_axis, "rank")), seed=((2,), (None,)))
  assert set(nnx.state(module, adapters.AdapterParam).keys()) == set(trained)
  assert set(nnx.state(module, adapters.AdapterState).keys()) == set(state)
  assert len(nnx.state(module, adapters.FROZEN_BASE)) == 0
  for names, var_type in ((trained, adapters.AdapterParam), (state, adapters.AdapterState)):
    for name, (shape, axes) in names.items():
      v = getattr(module, name)
      assert type(v) is (adapters.BalancingBias if name == "bias" else var_type), name
      assert tuple(v.shape) == shape, name
      assert str(v.dtype) == ("uint32" if name == "seed" else "float32"), name
      got = v.get_metadata().get("logical_axes")
      assert tuple(got) == axes, name
      assert set(got) <= ALLOWED_AXES
      sharding.logical_to_spec(got)
