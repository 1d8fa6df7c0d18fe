"""BASE_CHECKPOINT in a bucket, in every layout: mode_jax base, HF safetensors, official Flax."""

import os
import sys

import numpy as np
import pytest
from flax import nnx

from mode_jax import adapters
from mode_jax import checkpoints
from mode_jax import files
from mode_jax import models
from mode_jax import sharding
from mode_jax.models import pretrained

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "models"))
import test_pretrained_lib as lib  # noqa: E402  pylint: disable=g-import-not-at-top

ATOL = 1e-4


def _upload_dir(local: str, remote: str) -> None:
  for name in sorted(os.listdir(local)):
    files.copy(os.path.join(local, name), files.join(remote, name))


@pytest.fixture(scope="module")
def hf_model():
  return lib.hf_model(1, 1)


def test_hf_safetensors_from_a_bucket(gcs, hf_model, tmp_path):
  local = lib.save_hf(hf_model, tmp_path / "hf")
  remote = files.join(gcs["root"], "pretrained", "hf_gemma")
  _upload_dir(local, remote)
  files.write_bytes(files.join(remote, pretrained.TOKENIZER), b"sp")
  assert pretrained.detect_layout(remote) == pretrained.HF
  assert pretrained.read_config(remote) == pretrained.read_config(local)
  assert pretrained.tokenizer_path(remote) == files.join(remote, pretrained.TOKENIZER)
  toks = lib.tokens()
  mesh = sharding.make_mesh(data=2, model=4)
  ours = models.from_pretrained(remote, mesh=mesh)
  np.testing.assert_allclose(lib.logits(ours, toks), lib.hf_logits(hf_model, toks),
                             atol=ATOL, rtol=0)


def test_official_flax_tree_in_a_bucket(gcs, hf_model):
  root = files.join(gcs["root"], "pretrained", "kaggle")
  lib.save_orbax(lib.official_tree(hf_model, flat=True), files.join(root, "2b"))
  files.write_bytes(files.join(root, pretrained.TOKENIZER), b"sp")
  assert pretrained.detect_layout(root) == pretrained.FLAX
  assert pretrained.tokenizer_path(files.join(root, "2b")) == files.join(
      root, pretrained.TOKENIZER)
  toks = lib.tokens()
  np.testing.assert_allclose(lib.logits(models.from_pretrained(root), toks),
                             lib.hf_logits(hf_model, toks), atol=ATOL, rtol=0)


def test_mode_jax_base_checkpoint_in_a_bucket(gcs):
  model = models.build_model(models.get_config("tiny"), None, seed=3)
  remote = files.join(gcs["root"], "pretrained", "tiny_base")
  checkpoints.save_base(remote, model, source="test")
  assert pretrained.detect_layout(remote) == pretrained.BASE
  loaded = models.from_pretrained(remote, mesh=sharding.make_mesh(data=2, model=4))
  want = dict(nnx.state(model, adapters.FROZEN_BASE).flat_state())
  got = dict(nnx.state(loaded, adapters.FROZEN_BASE).flat_state())
  assert sorted(got) == sorted(want)
  for k, v in want.items():  # bit-exact, and sharded on load
    np.testing.assert_array_equal(np.asarray(got[k].get_value()), np.asarray(v.get_value()))
  assert len(loaded.embedder.input_embedding[...].sharding.device_set) == 8


def test_missing_bucket_checkpoint_is_named(gcs):
  missing = files.join(gcs["root"], "pretrained", "nothing_here")
  with pytest.raises(pretrained.PretrainedError, match="nothing_here.*is not a directory"):
    pretrained.detect_layout(missing)
