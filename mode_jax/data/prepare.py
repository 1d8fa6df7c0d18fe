"""Prepared examples of one task: prompts fitted, tokenized, cached as TFRecord.

Layout under the cache dir (default `~/.cache/mode_jax`, or the caller's):

    sni/<task>/counts-<key>.json            instances per split (no tokenizer)
    sni/<task>/<key>/{train,validation,test}.tfrecord
    sni/<task>/<key>/meta.json              counts, truncations, skips

`<key>` hashes the task file's size and mtime, the `SniConfig` and the
vocabulary, so a change of any of them prepares the task again. Files are
written to a temporary name and renamed, so concurrent hosts are safe.
Each TFRecord example holds: `inputs`/`targets` (int64 token ids, no EOS),
`inputs_pretokenized`, `targets_pretokenized`, `references` (all outputs),
`id`, `task`, `category`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile

from mode_jax.data import prompts
from mode_jax.data import records
from mode_jax.data import splits

CACHE_VERSION = 1
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mode_jax")


@dataclasses.dataclass(frozen=True)
class PreparedExample:
  """One example as the model and the evaluator see it.

  Attributes:
    task: task name.
    id: instance id.
    prompt: the (fitted) prompt string.
    input_ids: its token ids (empty when no tokenizer was given).
    target: the target string (training: one seeded choice among the
      references; validation/test: the first reference).
    references: all reference outputs (for the metrics).
    category: the task's first category, normalised (`question_answering`).
    truncated: whether the prompt was left-truncated to the budget.
  """
  task: str
  id: str
  prompt: str
  input_ids: tuple[int, ...]
  target: str
  references: tuple[str, ...]
  category: str
  truncated: bool = False


def build_examples(task: records.TaskRecord, cfg, split: str, vocabulary=None):
  """Prepared examples of one split of `task`.

  Args:
    task: the `TaskRecord`.
    cfg: the `SniConfig`.
    split: "train", "validation" or "test".
    vocabulary: a seqio vocabulary for the token budget; None builds the
      unfitted prompt (`format_prompt`) and leaves `input_ids` empty.

  Returns:
    A list of `PreparedExample`, in file order.
  """
  out = []
  for inst in splits.split_instances(task, cfg)[split]:
    target = (splits.choose_target(cfg.seed, task.name, inst) if split == "train"
              else inst.outputs[0])
    if vocabulary is None:
      prompt = prompts.format_prompt(task, inst, **cfg.prompt_kwargs())
      fitted = prompts.FittedPrompt(prompt, (), cfg.num_pos, cfg.num_neg, False)
    else:
      fitted = prompts.fit_prompt(task, inst, vocabulary.encode, vocabulary.decode,
                                  cfg.max_input_tokens, **cfg.prompt_kwargs())
    out.append(PreparedExample(task.name, inst.id, fitted.text, fitted.ids, target,
                               inst.outputs, task.category, fitted.truncated))
  return out


def _file_key(path: str) -> dict:
  st = os.stat(path)
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "v": CACHE_VERSION}


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def vocab_key(vocabulary) -> str:
  """Hash of the SentencePiece model bytes."""
  return hashlib.sha256(vocabulary.sp_model).hexdigest()[:16]


def _write_atomic(path: str, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class TaskStore:
  """Cache of one task under one config and vocabulary (lazy, memoised on disk).

  Attributes:
    path: the task file.
    cfg: the `SniConfig`.
    vocab_path: the SentencePiece model file.
    cache_dir: root of the cache.
  """
  path: str
  cfg: object
  vocab_path: str
  cache_dir: str = DEFAULT_CACHE_DIR

  @property
  def name(self) -> str:
    return os.path.splitext(os.path.basename(self.path))[0]

  def _dir(self) -> str:
    return os.path.join(self.cache_dir, "sni", self.name)

  def counts(self) -> dict:
    """{"train": n, "validation": n, "test": n, "skipped": k}; parses once."""
    key = _hash([_file_key(self.path), self.cfg.split_key()])
    path = os.path.join(self._dir(), f"counts-{key}.json")
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    task = records.read_task(self.path, self.cfg.on_error)
    counts = {k: len(v) for k, v in splits.split_instances(task, self.cfg).items()}
    counts["skipped"] = task.skipped
    _write_atomic(path, json.dumps(counts).encode())
    return counts

  def split_dir(self, vocabulary) -> str:
    key = _hash([_file_key(self.path), self.cfg.key(), vocab_key(vocabulary)])
    return os.path.join(self._dir(), key)

  def ensure(self, split: str, vocabulary) -> str:
    """Path of the split's TFRecord, preparing all splits on first use."""
    out_dir = self.split_dir(vocabulary)
    path = os.path.join(out_dir, f"{split}.tfrecord")
    if not os.path.exists(os.path.join(out_dir, "meta.json")):
      self._prepare(out_dir, vocabulary)
    return path

  def _prepare(self, out_dir: str, vocabulary):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    task = records.read_task(self.path, self.cfg.on_error)
    meta = {"task": task.name, "skipped": task.skipped, "counts": {}, "truncated": {}}
    for split in splits.SPLITS:
      examples = build_examples(task, self.cfg, split, vocabulary)
      chunks = []
      for ex in examples:
        chunks.append(_to_tf_example(tf, ex, vocabulary).SerializeToString())
      path = os.path.join(out_dir, f"{split}.tfrecord")
      os.makedirs(out_dir, exist_ok=True)
      tmp = path + f".tmp-{os.getpid()}"
      with tf.io.TFRecordWriter(tmp) as w:
        for c in chunks:
          w.write(c)
      os.replace(tmp, path)
      meta["counts"][split] = len(examples)
      meta["truncated"][split] = sum(ex.truncated for ex in examples)
    _write_atomic(os.path.join(out_dir, "meta.json"), json.dumps(meta).encode())

  def meta(self, vocabulary) -> dict:
    """Counts, truncations and skips of the prepared task (prepares it)."""
    self.ensure("train", vocabulary)
    with open(os.path.join(self.split_dir(vocabulary), "meta.json")) as f:
      return json.load(f)


def _to_tf_example(tf, ex: PreparedExample, vocabulary):
  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))

  def strs(v):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode() for s in v]))

  return tf.train.Example(features=tf.train.Features(feature={
      "inputs": ints(ex.input_ids), "targets": ints(vocabulary.encode(ex.target)),
      "inputs_pretokenized": strs([ex.prompt]), "targets_pretokenized": strs([ex.target]),
      "references": strs(ex.references), "id": strs([ex.id]), "task": strs([ex.task]),
      "category": strs([ex.category])}))


def feature_description(tf) -> dict:
  """`tf.io.parse_example` spec of the TFRecords written here (ragged lists)."""
  seq = lambda dt: tf.io.RaggedFeature(dt)  # noqa: E731
  scalar = tf.io.FixedLenFeature([], tf.string)
  return {"inputs": seq(tf.int64), "targets": seq(tf.int64), "references": seq(tf.string),
          "inputs_pretokenized": scalar, "targets_pretokenized": scalar, "id": scalar,
          "task": scalar, "category": scalar}
