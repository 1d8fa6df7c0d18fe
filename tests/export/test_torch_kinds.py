"""Every kind in PyTorch (mode_jax.torch) on the HF Gemma: our logits and greedy tokens."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mode_jax import adapters
from mode_jax import hf_export
from mode_jax.torch import attach
from mode_jax.torch import layers

import export_lib as xl  # pylint: disable=g-bad-import-order

T = xl.ALL_TARGETS
KINDS = {
    "lora": adapters.AdapterConfig(kind="lora", rank=4, alpha=8.0, targets=T),
    "molora": adapters.AdapterConfig(kind="molora", rank=2, num_experts=3, targets=T),
    "molora_sd": adapters.AdapterConfig(kind="molora_sd", rank=4, num_experts=3, targets=T),
    "mode": adapters.AdapterConfig(kind="mode", rank=4, num_experts=3, targets=T),
    "mode_p2_top2": adapters.AdapterConfig(kind="mode", rank=4, num_experts=3, expert_rank=2,
                                           top_k=2, alpha=2.0, targets=T),
    "flylora": adapters.AdapterConfig(kind="flylora", rank=8, top_k=3, alpha=16.0, targets=T),
    "smora": adapters.AdapterConfig(kind="smora", rank=8, top_k=3, alpha=4.0, targets=T),
}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return xl.hf_base(tmp_path_factory, 2, 2)


@pytest.fixture(scope="module", params=sorted(KINDS))
def exported(request, base, tmp_path_factory):
  model, acfg = xl.adapted(base, KINDS[request.param])
  out = str(tmp_path_factory.mktemp(request.param))
  hf_export.write_torch(model, acfg, out, step=7)
  return request.param, model, out


def test_logits_and_generate_equal_ours(base, exported):
  """Logits on prompt + the tokens `generate` chose with its KV cache: equal to
  ours, and each chosen token is our argmax after the same prefix, which makes
  the greedy sequences equal (by induction over the steps)."""
  kind, model, out = exported
  hf = attach.attach(xl.hf_from(base), out)
  assert sum(isinstance(m, layers.Adapted) for m in hf.modules()) == 2 * len(T)
  prompt, steps = xl.tokens(b=2, l=8, seed=5), 5
  seq = xl.hf_generate(hf, prompt, steps)
  ours = xl.logits(model, seq)
  assert np.abs(ours - xl.torch_logits(xl.hf_from(base), seq)).max() > 1e-2, kind
  np.testing.assert_allclose(xl.torch_logits(hf, seq), ours, atol=xl.ATOL, rtol=0)
  np.testing.assert_array_equal(ours[:, -steps - 1:-1].argmax(-1), seq[:, -steps:])


@pytest.fixture(scope="module")
def one_export(base, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("one"))
  hf_export.write_torch(*xl.adapted(base, KINDS["mode_p2_top2"]), out)
  return out


def test_attach_errors_name_the_module(base, one_export, tmp_path):
  out = one_export
  hf = attach.attach(xl.hf_from(base), out)
  with pytest.raises(ValueError, match="model.layers.0.* is not a plain projection"):
    attach.attach(hf, out)
  with pytest.raises(FileNotFoundError, match="mode_jax_adapters.json not found"):
    attach.attach(hf, str(tmp_path))


_NO_JAX = """
import sys
for name in ("jax", "jaxlib", "flax", "tensorflow", "optax", "orbax"):
  sys.modules[name] = None  # any import of them raises ImportError
import numpy as np, torch, transformers
from mode_jax.torch import attach
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32,
                                                          attn_implementation="eager")
attach.attach(model, sys.argv[2])
ids = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
assert ids.shape == (1, 6), ids.shape
print("generated", ids.tolist())
"""


@pytest.mark.slow  # a subprocess
def test_torch_side_imports_without_jax(base, one_export):
  out = one_export
  env = dict(os.environ, PYTHONPATH=REPO)
  res = subprocess.run([sys.executable, "-c", _NO_JAX, base, out], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "generated" in res.stdout
