"""AdapterConfig validation: a bad value fails and names its field."""

import pytest

from mode_jax import adapters


@pytest.mark.parametrize("kw,field", [
    (dict(kind="lorax"), "kind"),
    (dict(kind="MoDE"), "kind"),
    (dict(kind="mode", rank=4, num_experts=4, expert_rank=3), "expert_rank"),
    (dict(kind="mode", rank=4, num_experts=4, expert_rank=0), "expert_rank"),
    (dict(kind="mode", rank=6, num_experts=2, expert_rank=4), "expert_rank"),
    (dict(targets=("q", "attn_out")), "targets"),
    (dict(targets=()), "targets"),
    (dict(targets=("q", "q")), "targets"),
    (dict(kind="lora", num_experts=4), "num_experts"),
    (dict(kind="molora", num_experts=0), "num_experts"),
    (dict(rank=0), "rank"),
    (dict(rank=2.0), "rank"),
    (dict(b_init_scale=-1.0), "b_init_scale"),
    (dict(router_init_scale=-0.1), "router_init_scale"),
])
def test_bad_values_raise_naming_the_field(kw, field):
  with pytest.raises(ValueError, match=rf"AdapterConfig\.{field}\b"):
    adapters.AdapterConfig(**kw)


def test_error_lists_allowed_kinds():
  with pytest.raises(ValueError) as err:
    adapters.AdapterConfig(kind="lorax")
  for k in adapters.KINDS:
    assert k in str(err.value)


@pytest.mark.parametrize("kw", [
    dict(kind="lora", rank=64),
    dict(kind="molora", rank=4, num_experts=16),
    dict(kind="molora_sd", rank=4, num_experts=16),
    dict(kind="mode", rank=4, num_experts=16, expert_rank=1),
    dict(kind="mode", rank=16, num_experts=12, expert_rank=8),
    dict(kind="mode", rank=4, num_experts=6, expert_rank=4, targets=["q", "v"]),
])
def test_good_values(kw):
  cfg = adapters.AdapterConfig(**kw)
  assert isinstance(cfg.targets, tuple)
  assert cfg.scale == 1.0
  if cfg.kind == "mode":
    assert cfg.num_groups * cfg.expert_rank == cfg.rank
  else:
    assert cfg.num_groups == 1


def test_scale_is_alpha_over_rank():
  assert adapters.AdapterConfig(rank=8, alpha=16.0).scale == 2.0
  assert adapters.AdapterConfig(rank=8).scale == 1.0
