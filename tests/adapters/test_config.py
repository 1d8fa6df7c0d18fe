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
    (dict(kind="flylora", num_experts=4), "num_experts"),
    (dict(kind="smora", num_experts=2), "num_experts"),
    (dict(kind="smora", expert_rank=2), "expert_rank"),
    (dict(kind="flylora", rank=8, top_k=9), "top_k"),
    (dict(kind="smora", rank=8, top_k=0), "top_k"),
    (dict(kind="smora", rank=8, top_k=2.0), "top_k"),
    (dict(kind="mode", rank=4, num_experts=4, top_k=5), "top_k"),
    (dict(kind="lora", top_k=2), "top_k"),
    (dict(kind="molora", num_experts=4, top_k=2), "top_k"),
    (dict(kind="flylora", bias_rate=-1e-3), "bias_rate"),
    (dict(kind="mode", num_experts=4, bias_rate=1e-3), "bias_rate"),
    (dict(kind="flylora", density=0.0), "density"),
    (dict(kind="flylora", density=1.5), "density"),
    (dict(kind="smora", density=0.5), "density"),
    (dict(kind="mode", num_experts=4, top_k=2, aux_loss_weight=-0.1), "aux_loss_weight"),
    (dict(kind="mode", num_experts=4, aux_loss_weight=0.01), "aux_loss_weight"),
    (dict(kind="mode", num_experts=4, top_k=4, aux_loss_weight=0.01), "aux_loss_weight"),
    (dict(kind="smora", aux_loss_weight=0.01), "aux_loss_weight"),
    (dict(alpha=0.0), "alpha"),
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
    dict(kind="mode", rank=4, num_experts=16, top_k=2, aux_loss_weight=0.01),
    dict(kind="mode", rank=4, num_experts=16, top_k=16),
    dict(kind="flylora", rank=32, top_k=8, density=0.25, bias_rate=1e-3),
    dict(kind="smora", rank=64, top_k=8, alpha=8.0, bias_rate=0.0),
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


def test_rankwise_defaults_are_the_published_ones():
  fly = adapters.AdapterConfig(kind="flylora", rank=32)
  assert (fly.top_k, fly.bias_rate, fly.density) == (8, 1e-3, None)
  smora = adapters.AdapterConfig(kind="smora", rank=64)
  assert (smora.top_k, smora.bias_rate) == (8, 1e-5)
  assert adapters.AdapterConfig(kind="smora", rank=4).top_k == 4  # capped at R
  # SMoRA scales by alpha / k, FlyLoRA (like the others) by alpha / R.
  assert adapters.AdapterConfig(kind="smora", rank=64, top_k=8, alpha=16.0).scale == 2.0
  assert adapters.AdapterConfig(kind="flylora", rank=32, top_k=8, alpha=64.0).scale == 2.0
  dense = adapters.AdapterConfig(kind="mode", rank=4, num_experts=4, top_k=4)
  assert not dense.sparse_experts
  assert adapters.AdapterConfig(kind="mode", rank=4, num_experts=4, top_k=2).sparse_experts


@pytest.mark.parametrize("kind,rank,k,alpha", [("flylora", 32, 8, 64.0), ("smora", 64, 8, 16.0)])
def test_gin_files_bind_the_published_defaults(kind, rank, k, alpha):
  from mode_jax import launch
  launch.parse_gin(["models/tiny.gin", f"adapters/{kind}.gin", "runs/finetune.gin"],
                   ["MODEL_DIR = 'x'", "SNI_DIR = 'y'", "TRAIN_STEPS = 1", "BATCH_SIZE = 1",
                    "INPUT_LENGTH = 8", "TASK_FEATURE_LENGTHS = {'inputs': 8, 'targets': 4}"])
  cfg = launch.query("train.adapter")
  assert (cfg.kind, cfg.rank, cfg.top_k, cfg.alpha) == (kind, rank, k, alpha)
  assert cfg.bias_rate == {"flylora": 1e-3, "smora": 1e-5}[kind]
  assert cfg.targets == ("q", "k", "v", "o")
  if kind == "flylora":
    from mode_jax.adapters import flylora
    assert cfg.density is None and flylora.nonzeros(cfg, 2048) == 512  # rho = k / R
