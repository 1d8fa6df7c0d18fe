"""LoRA -> PEFT: `peft.PeftModel` on the HF Gemma gives our logits and greedy tokens."""

import json
import os

import numpy as np
import peft
import pytest

from mode_jax import adapters
from mode_jax import hf_export

import export_lib as xl  # pylint: disable=g-bad-import-order

CASES = {"gemma2_gqa": (2, 2), "gemma1_mqa": (1, 1)}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
  gen, kv = CASES[request.param]
  base = xl.hf_base(tmp_path_factory, gen, kv)
  acfg = adapters.AdapterConfig(kind="lora", rank=4, alpha=6.0, targets=xl.ALL_TARGETS)
  model, acfg = xl.adapted(base, acfg)
  out = str(tmp_path_factory.mktemp("peft"))
  hf_export.write_peft(model, acfg, out, base_name=base)
  return base, model, acfg, out


def test_peft_config_translates_rank_alpha_and_modules(exported):
  _, _, acfg, out = exported
  cfg = json.load(open(os.path.join(out, "adapter_config.json")))
  assert cfg["r"] == 4 and cfg["lora_alpha"] == 6 and cfg["peft_type"] == "LORA"
  assert cfg["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"])
  loaded = peft.LoraConfig.from_pretrained(out)
  assert loaded.lora_alpha / loaded.r == pytest.approx(acfg.scale) == 1.5


def test_peft_logits_and_generate_equal_ours(exported):
  base, model, _, out = exported
  toks = xl.tokens(b=2, l=9, seed=3)
  hf = peft.PeftModel.from_pretrained(xl.hf_from(base), out).eval()
  ours = xl.logits(model, toks)
  plain = xl.torch_logits(xl.hf_from(base), toks)
  assert np.abs(ours - plain).max() > 1e-2  # the adapters change the model
  np.testing.assert_allclose(xl.torch_logits(hf, toks), ours, atol=xl.ATOL, rtol=0)
  np.testing.assert_array_equal(xl.hf_greedy(hf, toks, 6), xl.our_greedy(model, toks, 6))


def test_routed_kinds_are_refused(tmp_path_factory):
  base = xl.hf_base(tmp_path_factory, 1, 1, "base_mode")
  model, acfg = xl.adapted(base, adapters.AdapterConfig(kind="mode", rank=4, num_experts=2))
  with pytest.raises(ValueError, match="'mode' .* routes each token.*--format=torch"):
    hf_export.write_peft(model, acfg, str(tmp_path_factory.mktemp("x")))
