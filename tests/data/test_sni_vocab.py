"""The shipped tiny SentencePiece models rebuild byte for byte."""

import pytest

from mode_jax.data import vocab


@pytest.mark.parametrize("size", vocab.SIZES)
def test_rebuild_is_identical(size):
  with open(vocab.default_path(size), "rb") as f:
    assert vocab.build(size) == f.read()


def test_vocabulary():
  v = vocab.get_vocabulary()
  assert v.vocab_size == 1024 and v.eos_id == 1 and v.pad_id == 0
  assert vocab.get_vocabulary(vocab_size=512).vocab_size == 512
  text = "Definition: Höhe 42.\n\nOutput: "
  assert v.decode(v.encode(text)) == text  # Byte fallback: nothing is unknown.
  with pytest.raises(FileNotFoundError, match="nothing.model"):
    vocab.get_vocabulary("/nonexistent/nothing.model")  # gs:// paths: tests/gcs
  with pytest.raises(ValueError, match="shipped sizes"):
    vocab.default_path(256)
