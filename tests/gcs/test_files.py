"""The path layer against a real GCS-API server: files, part logs, vocabulary."""

import json
import os

import pytest

from mode_jax import files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = os.path.join(REPO, "data", "vocab", "sni_sample_512.model")


def test_files_round_trip_in_a_bucket(gcs):
  root = files.join(gcs["root"], "files")
  files.write_json(files.join(root, "a", "x.json"), {"x": 1})
  files.write_text(files.join(root, "a", "b", "y.txt"), "y")
  files.write_bytes(files.join(root, "z.bin"), b"\0\1")
  assert files.read_json(files.join(root, "a", "x.json")) == {"x": 1}
  assert files.read_json(files.join(root, "missing.json"), {"d": 0}) == {"d": 0}
  assert files.isdir(files.join(root, "a")) and not files.isdir(files.join(root, "z.bin"))
  assert files.isfile(files.join(root, "z.bin")) and not files.exists(files.join(root, "q"))
  assert files.listdir(root) == ["a", "z.bin"]
  assert files.glob(root, "**/*.json") == [files.join(root, "a", "x.json")]
  assert files.glob(root, "**/y.txt") == [files.join(root, "a", "b", "y.txt")]
  assert files.stat_key(files.join(root, "z.bin"))["size"] == 2
  with files.open_file(files.join(root, "a", "b", "y.txt")) as f:
    assert f.read() == b"y"
  files.copy(files.join(root, "z.bin"), files.join(root, "c", "z2.bin"))
  assert files.read_bytes(files.join(root, "c", "z2.bin")) == b"\0\1"


def test_line_writer_writes_part_objects_never_rewrites(gcs):
  path = files.join(gcs["root"], "logs", "train_metrics.jsonl")
  w = files.LineWriter(path, flush_every_s=float("inf"))
  for i in range(5):
    w.write(json.dumps({"step": i}))
  assert files.read_lines(path) == []  # buffered, nothing written per line
  w.flush()
  w.write(json.dumps({"step": 5}))
  w.close()
  assert files.part_paths(path) == [path + ".00000", path + ".00001"]
  first = files.read_text(path + ".00000")
  w2 = files.LineWriter(path)  # a restarted writer continues the numbering
  w2.write(json.dumps({"step": 6}))
  w2.close()
  assert files.read_text(path + ".00000") == first  # parts are written once
  assert [json.loads(s)["step"] for s in files.read_lines(path)] == list(range(7))
  with pytest.raises(ValueError, match="LineWriter"):
    files.append_line(path, "x")


def test_vocabulary_from_a_bucket(gcs, tmp_path):
  from mode_jax.data import vocab
  remote = files.join(gcs["root"], "vocab", "tokenizer.model")
  files.copy(VOCAB, remote)
  v_remote, v_local = vocab.get_vocabulary(remote), vocab.get_vocabulary(VOCAB)
  text = "Which country's capital is Paris?\nAnswer:"
  assert v_remote.encode(text) == v_local.encode(text)
  assert v_remote.vocab_size == v_local.vocab_size == 512
  with pytest.raises(FileNotFoundError, match="nothing.model"):
    vocab.get_vocabulary(files.join(gcs["root"], "vocab", "nothing.model"))
