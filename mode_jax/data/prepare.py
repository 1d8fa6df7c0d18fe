"""Prepared examples of one task: prompts fitted, tokenized, cached as TFRecord.

Layout under the cache dir (default `~/.cache/mode_jax`, or the caller's,
local or gs://):

    sni/<task>/counts-<key>.json            instances per split (no tokenizer)
    sni/<task>/<key>/{train,validation,test}.tfrecord
    sni/<task>/<key>/meta.json              counts, truncations, skips

`<key>` hashes the task file's size and mtime, the `SniConfig`, the
vocabulary and the shard, so a change of any of them prepares the task
again. Files are written to a temporary name and renamed, so concurrent
hosts are safe.

Per-host work stays per-host: a host reading shard i of n (seqio's
`ShardInfo`, one shard per process) tokenizes only the examples i, i + n,
... of each split (what `tf.data.Dataset.shard(n, i)` of the whole split
would give), so n hosts share the tokenization instead of each doing all of
it. With the cache in a bucket, a shard is prepared in a local mirror
(`~/.cache/mode_jax/remote/...`, where tf.data reads it) and uploaded; a
host that restarts on a fresh VM (preemption) downloads its shard instead
of tokenizing again.
Each TFRecord example holds: `inputs`/`targets` (int64 token ids, no EOS),
`inputs_pretokenized`, `targets_pretokenized`, `references` (all outputs),
`id`, `task`, `category`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from mode_jax import files
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


def build_examples(task: records.TaskRecord, cfg, split: str, vocabulary=None,
                   shard: tuple[int, int] = (0, 1)):
  """Prepared examples of one split of `task`: `iter_examples` as a list."""
  return list(iter_examples(task, cfg, split, vocabulary, shard))


def iter_examples(task: records.TaskRecord, cfg, split: str, vocabulary=None,
                  shard: tuple[int, int] = (0, 1), max_examples: int | None = None):
  """Prepared examples of one split of `task`, one at a time.

  Args:
    task: the `TaskRecord`.
    cfg: the `SniConfig`.
    split: "train", "validation" or "test".
    vocabulary: a seqio vocabulary for the token budget; None builds the
      unfitted prompt (`format_prompt`) and leaves `input_ids` empty.
    shard: (index, count): only the examples index, index + count, ... of
      the split are built (tokenized).
    max_examples: keep at most this many instances of the split (before
      sharding), chosen by `splits.cap_instances` (seeded by `cfg.seed`);
      None: all.

  Yields:
    `PreparedExample`s, in file order. Only the instance being yielded is
    tokenized, so a caller that streams holds one task's parsed file, not
    its token ids.
  """
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f"shard {shard}: need 0 <= index < count")
  instances = splits.cap_instances(splits.split_instances(task, cfg)[split], cfg.seed,
                                   task.name, max_examples)
  for inst in instances[index::count]:
    target = (splits.choose_target(cfg.seed, task.name, inst) if split == "train"
              else inst.outputs[0])
    if vocabulary is None:
      prompt = prompts.format_prompt(task, inst, **cfg.prompt_kwargs())
      fitted = prompts.FittedPrompt(prompt, (), cfg.num_pos, cfg.num_neg, False)
    else:
      fitted = prompts.fit_prompt(task, inst, vocabulary.encode, vocabulary.decode,
                                  cfg.max_input_tokens, **cfg.prompt_kwargs())
    yield PreparedExample(task.name, inst.id, fitted.text, fitted.ids, target,
                          inst.outputs, task.category, fitted.truncated)


def _file_key(path: str) -> dict:
  return {**files.stat_key(path), "v": CACHE_VERSION}


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def vocab_key(vocabulary) -> str:
  """Hash of the SentencePiece model bytes."""
  return hashlib.sha256(vocabulary.sp_model).hexdigest()[:16]


def local_dir(out_dir: str) -> str:
  """Where tf.data reads a prepared shard: `out_dir`, or its local mirror."""
  if not files.is_remote(out_dir):
    return out_dir
  return os.path.join(DEFAULT_CACHE_DIR, "remote", out_dir.replace("://", "/", 1))


@dataclasses.dataclass(frozen=True)
class TaskStore:
  """Cache of one task under one config and vocabulary (lazy, memoised on disk).

  Attributes:
    path: the task file (local or gs://).
    cfg: the `SniConfig`.
    vocab_path: the SentencePiece model file.
    cache_dir: root of the cache (local or gs://).
  """
  path: str
  cfg: object
  vocab_path: str
  cache_dir: str = DEFAULT_CACHE_DIR

  @property
  def name(self) -> str:
    return files.basename(self.path).removesuffix(".json")

  def _dir(self) -> str:
    return files.join(self.cache_dir, "sni", self.name)

  def counts(self) -> dict:
    """{"train": n, "validation": n, "test": n, "skipped": k}; parses once."""
    key = _hash([_file_key(self.path), self.cfg.split_key()])
    path = files.join(self._dir(), f"counts-{key}.json")
    cached = files.read_json(path)
    if cached is not None:
      return cached
    task = records.read_task(self.path, self.cfg.on_error)
    counts = {k: len(v) for k, v in splits.split_instances(task, self.cfg).items()}
    counts["skipped"] = task.skipped
    files.write_json(path, counts)
    return counts

  def split_dir(self, vocabulary, shard: tuple[int, int] = (0, 1)) -> str:
    """The cache directory of one shard (local or gs://)."""
    parts = [_file_key(self.path), self.cfg.key(), vocab_key(vocabulary)]
    if shard != (0, 1):
      parts.append(list(shard))
    return files.join(self._dir(), _hash(parts))

  def ensure(self, split: str, vocabulary, shard: tuple[int, int] = (0, 1)) -> str:
    """Local path of the shard's TFRecord of `split`, preparing all splits on first use.

    Args:
      split: "train", "validation" or "test".
      vocabulary: the seqio vocabulary.
      shard: (index, count) of this host's shard (seqio's ShardInfo).
    """
    out_dir = self.split_dir(vocabulary, shard)
    local = local_dir(out_dir)
    if not os.path.exists(os.path.join(local, "meta.json")):
      if files.is_remote(out_dir) and files.exists(files.join(out_dir, "meta.json")):
        for name in [f"{s}.tfrecord" for s in splits.SPLITS] + ["meta.json"]:
          files.copy(files.join(out_dir, name), os.path.join(local, name))
      else:
        self._prepare(local, vocabulary, shard)
        if files.is_remote(out_dir):  # meta.json last: it marks a complete upload
          for name in [f"{s}.tfrecord" for s in splits.SPLITS] + ["meta.json"]:
            files.copy(os.path.join(local, name), files.join(out_dir, name))
    return os.path.join(local, f"{split}.tfrecord")

  def _prepare(self, out_dir: str, vocabulary, shard):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    task = records.read_task(self.path, self.cfg.on_error)
    meta = {"task": task.name, "skipped": task.skipped, "counts": {}, "truncated": {},
            "shard": list(shard)}
    os.makedirs(out_dir, exist_ok=True)
    for split in splits.SPLITS:
      examples = build_examples(task, self.cfg, split, vocabulary, shard)
      path = os.path.join(out_dir, f"{split}.tfrecord")
      tmp = path + f".tmp-{os.getpid()}"
      with tf.io.TFRecordWriter(tmp) as w:
        for ex in examples:
          w.write(_to_tf_example(tf, ex, vocabulary).SerializeToString())
      os.replace(tmp, path)
      meta["counts"][split] = len(examples)
      meta["truncated"][split] = sum(ex.truncated for ex in examples)
    files.write_json(os.path.join(out_dir, "meta.json"), meta)

  def meta(self, vocabulary, shard: tuple[int, int] = (0, 1)) -> dict:
    """Counts, truncations and skips of the prepared shard (prepares it)."""
    path = self.ensure("train", vocabulary, shard)
    return json.loads(files.read_text(os.path.join(os.path.dirname(path), "meta.json")))


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
