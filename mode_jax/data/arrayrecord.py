"""Prepared training examples as ArrayRecord files: random access for Grain.

`ArrayRecordStore(task_store)` keeps, beside each prepared TFRecord of a
`prepare.TaskStore` (same cache dir, same `<key>` directory, hence the same
invalidation: a change of the task file, `SniConfig`, vocabulary or shard
gives a new key), one ArrayRecord file per split:

    sni/<task>/<key>/{train,validation,test}.array_record
    sni/<task>/<key>/array_record.json       counts; written last (complete)

A record holds what training reads (`tasks.TRAIN_FEATURES`): the token ids
of inputs and targets (no EOS, untrimmed, as in the TFRecord) and the
instance id, as a small binary layout (`encode` / `decode`), not a
tf.train.Example, so a reader needs no TensorFlow and decodes in
microseconds.

Sharding is the TaskStore's: shard (i, n) holds the examples i, i + n, ...
of each split, so a host prepares (tokenizes and converts) only its own
share. The files are converted from the shard's TFRecord (tokenizing it
first if needed), written to a temporary name and renamed. ArrayRecord
reads local files only; with the cache in a bucket the files live in the
TaskStore's local mirror and are uploaded through `mode_jax.files` (the
marker last), and a host on a fresh VM downloads them instead of converting.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from mode_jax import files
from mode_jax.data import prepare
from mode_jax.data import splits

# Bump when the record layout changes: it names the marker file, so old
# files are converted again rather than mis-decoded.
FORMAT_VERSION = 1
MARKER = f"array_record-v{FORMAT_VERSION}.json"
# group_size:1 makes each record its own chunk: a random read decodes one
# record, not a group (MaxText writes its ArrayRecords the same way).
WRITER_OPTIONS = "group_size:1"


@dataclasses.dataclass(frozen=True)
class Record:
  """One decoded training example.

  Attributes:
    inputs: int32[n] prompt token ids (no EOS).
    targets: int32[m] target token ids (no EOS).
    id: the SNI instance id.
  """
  inputs: np.ndarray
  targets: np.ndarray
  id: str


def encode(inputs, targets, example_id: str) -> bytes:
  """Bytes of one record: uint32 lengths (2), int32 inputs, int32 targets, utf-8 id."""
  inputs = np.asarray(inputs, np.int32)
  targets = np.asarray(targets, np.int32)
  head = np.array([inputs.size, targets.size], np.uint32)
  return head.tobytes() + inputs.tobytes() + targets.tobytes() + example_id.encode()


def decode(data: bytes) -> Record:
  """The `Record` of `encode`'s bytes (views into `data`, no copy)."""
  n, m = np.frombuffer(data, np.uint32, 2)
  n, m = int(n), int(m)
  inputs = np.frombuffer(data, np.int32, n, 8)
  targets = np.frombuffer(data, np.int32, m, 8 + 4 * n)
  return Record(inputs, targets, data[8 + 4 * (n + m):].decode())


def _write(path: str, records) -> int:
  """Writes `records` (bytes) to a local ArrayRecord file atomically; returns the count."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  tmp = f"{path}.tmp-{os.getpid()}"
  writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
  count = 0
  try:
    for rec in records:
      writer.write(rec)
      count += 1
  finally:
    writer.close()
  os.replace(tmp, path)  # local: the ArrayRecord writer has no bucket I/O
  return count


def _tfrecord_records(path: str):
  """`encode`d records of a prepared TFRecord (training features only), in file order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  desc = prepare.feature_description(tf)
  desc = {k: desc[k] for k in ("inputs", "targets", "id")}
  ds = tf.data.TFRecordDataset(path).batch(1024).map(lambda r: tf.io.parse_example(r, desc))
  for batch in ds.as_numpy_iterator():
    inputs, targets = batch["inputs"], batch["targets"]
    for i, ex_id in enumerate(batch["id"]):
      yield encode(inputs[i], targets[i], ex_id.decode())


@dataclasses.dataclass(frozen=True)
class ArrayRecordStore:
  """The ArrayRecord files of one `prepare.TaskStore` (lazy, memoised on disk).

  Attributes:
    store: the task's TaskStore (its cache dir, config and vocabulary path).
  """
  store: prepare.TaskStore

  @property
  def name(self) -> str:
    return self.store.name

  def ensure(self, vocabulary, shard: tuple[int, int] = (0, 1)) -> dict:
    """Prepares the shard's ArrayRecord files of all splits (once); returns their meta.

    Args:
      vocabulary: the seqio vocabulary (part of the cache key).
      shard: (index, count) of this host's shard.

    Returns:
      {"paths": {split: local path}, "counts": {split: examples}}.
    """
    out_dir = self.store.split_dir(vocabulary, shard)
    local = prepare.local_dir(out_dir)
    marker = os.path.join(local, MARKER)
    names = [f"{s}.array_record" for s in splits.SPLITS] + [MARKER]
    if not os.path.exists(marker):
      remote = files.is_remote(out_dir)
      if remote and files.exists(files.join(out_dir, MARKER)):
        for name in names:  # a host on a fresh VM: download, don't convert
          files.copy(files.join(out_dir, name), os.path.join(local, name))
      else:
        counts = {}
        for split in splits.SPLITS:
          tfrecord = self.store.ensure(split, vocabulary, shard)  # tokenizes if needed
          counts[split] = _write(os.path.join(local, f"{split}.array_record"),
                                 _tfrecord_records(tfrecord))
        files.write_json(marker, {"task": self.name, "shard": list(shard), "counts": counts,
                                  "format": FORMAT_VERSION})
        if remote:  # the marker last: it marks a complete upload
          for name in names:
            files.copy(os.path.join(local, name), files.join(out_dir, name))
    meta = files.read_json(marker)
    return {"paths": {s: os.path.join(local, f"{s}.array_record") for s in splits.SPLITS},
            "counts": meta["counts"]}


def read(path: str) -> list[Record]:
  """Every record of one ArrayRecord file (inspection and tests; training reads by index)."""
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  source = array_record_data_source.ArrayRecordDataSource([path])
  return [decode(source[i]) for i in range(len(source))]
