"""Batches of decoder-only model features, sharded by host and resumable.

`BatchIterator` runs the steps of `seqio.get_dataset` with
`seqio.DecoderFeatureConverter`
(inputs and targets concatenated; for an "inputs" task it is seqio's
PrefixLM converter with the loss on target tokens only) and yields dicts of
numpy int32 arrays [batch_size, inputs + targets]:

    decoder_target_tokens, decoder_input_tokens, decoder_loss_weights,
    decoder_causal_attention, and with packing decoder_positions and
    decoder_segment_ids.

Each process passes its `shard_id` / `num_shards` (seqio.ShardInfo): the
shards are disjoint at the examples of every task. `batch_size` is per host.
With `shards_per_host = k` a process reads the k seqio shards
`shard_id * k ... shard_id * k + k - 1` of `num_shards * k`, `batch_size / k`
rows from each, concatenated in shard order: one process with k = N then
reads exactly the global batches of N processes with k = 1 (the multi-host
tests compare the two).

Resuming, in constant time: `save_checkpoint(directory)` writes this
process's tf.data iterator state (`tf.train.Checkpoint`, as T5X's per-host
dataset checkpoints) and `restore_checkpoint(directory)` reads it back: the
cost is that of the buffered elements (shuffle and prefetch buffers), not of
the batches consumed. Why tf.data checkpoints: the pipeline *is* SeqIO's
tf.data graph (file sources, per-task shuffles, mixture sampling, packing),
and tf.data checkpoints all of it exactly, with no change of data order; a
seekable index design would need random-access sources and its own mixture
sampler (Grain), i.e. another data stack. The price is size: the per-task
shuffle buffers (seqio keeps up to 1000 examples per task; token ids and
the id only, `tasks.SniSource` drops the text before the shuffle) are saved
too, so the state, its restore and the pipeline's build grow with the
number of tasks, never with the step. `tf.data.Options
.experimental_symbolic_checkpoint` would not shrink it (the shuffle buffers
are saved either way; it only drops the prefetch buffers), and with it this
pipeline produced no first batch in 8 minutes (TF 2.21), so it is off. The
older `state()` / `restore(state)` pair skips the consumed batches (a
re-read that grows with the step) and stays for comparison
(benchmarks/resume_data.py).

A tf.data state fits only the graph that wrote it: a checkpoint of an
older mode_jax, or of another task list, restored into this pipeline would
fail at the first batch with a bare tf.data error ("Expected 3 components
but got 8"). So `save_checkpoint` records the pipeline's structure
(`structure_fingerprint`: each dataset op with its element types, no paths
or names) and `restore_checkpoint` uses the saved state only when it
matches; otherwise, or for a state saved before the fingerprint existed, it
logs why and re-reads the consumed batches to the same position (the data
order does not depend on the tf.data state). The re-read runs through the
unchanged pipeline (no `skip` in the graph), so the next checkpoint is a
full one again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from mode_jax import datasets
from mode_jax import files


# The options of a `BatchIterator`: the fields of a data request (one class,
# TensorFlow-free, in `mode_jax.datasets`).
PipelineConfig = datasets.BatchSpec


def _shard_dataset(cfg: PipelineConfig, shard: seqio.ShardInfo,
                   batch_size: int) -> tf.data.Dataset:
  lengths = dict(cfg.task_feature_lengths)
  # As seqio.get_dataset, which does not pass try_in_mem_cache on.
  ds = seqio.get_mixture_or_task(cfg.mixture_or_task_name).get_dataset(
      lengths, split=cfg.split, shuffle=cfg.shuffle, seed=cfg.seed,
      shard_info=shard, num_epochs=cfg.num_epochs, try_in_mem_cache=cfg.cache_in_memory)
  ds = seqio.DecoderFeatureConverter(pack=cfg.pack)(ds, task_feature_lengths=lengths)
  return ds.batch(batch_size, drop_remainder=cfg.num_epochs is None)


def make_dataset(cfg: PipelineConfig) -> tf.data.Dataset:
  """The batched tf.data pipeline of `cfg`."""
  k = cfg.shards_per_host
  parts = [_shard_dataset(cfg, seqio.ShardInfo(cfg.shard_id * k + i, cfg.num_shards * k),
                          cfg.batch_size // k) for i in range(k)]
  if k == 1:
    ds = parts[0]
  else:  # Rows of shard 0, then shard 1, ...: the global batch of k hosts.
    ds = tf.data.Dataset.zip(tuple(parts)).map(
        lambda *bs: {key: tf.concat([b[key] for b in bs], 0) for key in bs[0]})
  ds = ds.map(lambda b: {k: tf.cast(v, tf.int32) for k, v in b.items()})
  return ds.prefetch(tf.data.AUTOTUNE)


def structure_fingerprint(ds: tf.data.Dataset) -> str:
  """A hash of the dataset ops of `ds`'s graph and their element types.

  Two pipelines with equal fingerprints have the same iterator state
  layout (what a tf.data checkpoint of one needs of the other); paths,
  task names, seeds and lengths do not enter it. Milliseconds to compute.
  """
  graph = tf.compat.v1.GraphDef()
  graph.ParseFromString(ds._as_serialized_graph().numpy())  # pylint: disable=protected-access
  ops = [f"{n.op}{list(n.attr['output_types'].list.type)}" for n in graph.node
         if "Dataset" in n.op]
  return hashlib.sha256("\n".join(ops).encode()).hexdigest()[:16]


class BatchIterator:
  """Iterator of numpy batches with a JSON-serialisable position.

  Example:
    it = BatchIterator("sni_train", {"inputs": 896, "targets": 128}, 8,
                       shard_id=jax.process_index(), num_shards=jax.process_count())
    batch = next(it)            # {"decoder_target_tokens": int32[8, 1024], ...}
    state = it.state()          # store with the checkpoint
    it2 = BatchIterator(...same args...); it2.restore(state)   # same stream
  """

  def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               batch_size: int, split: str = "train", shuffle: bool = True, seed: int = 0,
               shard_id: int = 0, num_shards: int = 1, pack: bool = False,
               num_epochs: int | None = None, cache_in_memory: bool = False,
               shards_per_host: int = 1, save_iterator: bool = True):
    self.config = PipelineConfig(
        mixture_or_task_name, dict(task_feature_lengths), batch_size, split=split,
        shuffle=shuffle, seed=seed, shard_id=shard_id, num_shards=num_shards, pack=pack,
        num_epochs=num_epochs, cache_in_memory=cache_in_memory, shards_per_host=shards_per_host,
        save_iterator=save_iterator)
    self._consumed = 0
    self._it = None
    self._fingerprint = None
    self._fresh = False  # _it was built at batch 0 and has yielded nothing yet

  @property
  def save_iterator(self) -> bool:
    """save_checkpoint writes the tf.data state (True) or the position only."""
    return self.config.save_iterator

  @save_iterator.setter
  def save_iterator(self, value: bool) -> None:
    self.config = dataclasses.replace(self.config, save_iterator=value)

  @classmethod
  def from_spec(cls, spec: datasets.BatchSpec) -> "BatchIterator":
    """The iterator of a `Dataset.batches` request."""
    return cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})

  def _iterator(self) -> Iterator:
    if self._it is None:
      ds = make_dataset(self.config)
      self._fingerprint = structure_fingerprint(ds)
      self._it = iter(ds)
      self._read(self._consumed)  # a re-read (restore(state))
      self._fresh = self._consumed == 0
    return self._it

  def _read(self, n: int) -> None:
    """Draws and drops n batches; not `ds.skip`, so the graph (and the
    fingerprint) stays that of a fresh pipeline."""
    for _ in range(n):
      next(self._it)

  def build(self) -> None:
    """Builds the tf.data pipeline now (else at the first batch or restore).

    `restore_checkpoint` then reads the saved state into this pipeline; the
    benchmark times the two apart.
    """
    self._iterator()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = {k: v.numpy() for k, v in next(self._iterator()).items()}
    self._consumed += 1
    self._fresh = False
    return batch

  def state(self) -> dict:
    """Position of the stream: JSON-serialisable."""
    c = self.config
    return {"batches": self._consumed, "seed": c.seed, "shard_id": c.shard_id,
            "num_shards": c.num_shards, "name": c.mixture_or_task_name,
            "batch_size": c.batch_size, "pack": c.pack,
            "shards_per_host": c.shards_per_host}

  def restore(self, state: Mapping) -> None:
    """Continues the stream after `state["batches"]` batches.

    Raises:
      ValueError: `state` was saved by an iterator with other settings, or
        by the Grain loader.
    """
    self._check(state, "BatchIterator.restore: state")
    self._consumed = int(state["batches"])
    self._it, self._fresh = None, False

  def _check(self, state: Mapping, what: str) -> None:
    # A Grain state has the same "batches" key but positions in another data
    # order: re-reading that many batches here would silently feed the run
    # other examples than the ones it would have seen next.
    if state.get("loader") == "grain" or ("mixture" in state and "pipeline" not in state):
      raise ValueError(f"{what} was saved by the Grain loader (data.grain_pipeline."
                       "GrainBatchIterator), whose data order differs: resume this run with "
                       "datasets.SniDataset.loader='grain'")
    state = {"shards_per_host": 1, **state}  # States saved before shards_per_host.
    mine = self.state()
    for k in ("seed", "shard_id", "num_shards", "name", "batch_size", "pack",
              "shards_per_host"):
      if k in state and state[k] != mine[k]:
        raise ValueError(f"{what}[{k!r}]={state[k]!r} but this iterator has {mine[k]!r}")

  def _files(self, directory: str, process_index: int) -> tuple[str, str]:
    prefix = files.join(str(directory), f"process_{process_index}")  # may be gs://
    return prefix, prefix + ".json"

  def save_checkpoint(self, directory: str, process_index: int = 0) -> None:
    """Writes this iterator's exact position under `directory` (one process's files).

    Files: `process_<i>.json` (the `state()` dict) and the tf.data iterator
    checkpoint `process_<i>.index` / `.data-*`. Every process writes its own.
    With `self.save_iterator = False` only the JSON is written (small, but
    restoring re-reads the consumed batches). tf.train.Checkpoint writes
    through TensorFlow's file system, which cannot reach every bucket
    endpoint (an emulator, say): it writes to a local temporary directory,
    and the files are copied through `mode_jax.files`, the one path layer.
    """
    prefix, meta = self._files(directory, process_index)
    files.makedirs(str(directory))
    if self.save_iterator:
      with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, f"process_{process_index}")
        tf.train.Checkpoint(iterator=self._iterator()).write(local)
        for name in os.listdir(tmp):
          if name.startswith(f"process_{process_index}."):
            files.copy(os.path.join(tmp, name), files.join(str(directory), name))
    files.write_text(meta, json.dumps({**self.state(), "pipeline": self._fingerprint}))

  def restore_checkpoint(self, directory: str, process_index: int = 0) -> None:
    """Continues from a `save_checkpoint`: constant time, whatever the position.

    A tf.data state saved by a pipeline of another structure (see the module
    docstring) is not used: the consumed batches are re-read instead.

    Raises:
      FileNotFoundError: no state of process `process_index` under `directory`.
      ValueError: the state was saved by an iterator with other settings, or
        by the Grain loader (the message names the file).
    """
    prefix, meta = self._files(directory, process_index)
    if not files.exists(meta):
      raise FileNotFoundError(f"no data iterator state {meta!r} (was the checkpoint "
                              "written by fewer processes, or by an older version?)")
    state = json.loads(files.read_text(meta))
    self._check(state, f"data iterator state {meta!r}")
    if not files.exists(prefix + ".index"):  # saved with save_iterator=False
      self.restore(state)
      return
    if not self._fresh:  # a pipeline at batch 0 that has yielded nothing
      self._consumed, self._it = 0, None
    self._iterator()
    if state.get("pipeline") != self._fingerprint:
      logging.warning(
          "data iterator state %r: its tf.data state was saved by a pipeline of another "
          "structure (fingerprint %s, this one %s: an older mode_jax or another task "
          "list); re-reading %d batches to the same position instead", meta,
          state.get("pipeline", "none, saved before fingerprints"), self._fingerprint,
          int(state["batches"]))
      self._read(int(state["batches"]))
      self._consumed, self._fresh = int(state["batches"]), False
      return
    with tempfile.TemporaryDirectory() as tmp:
      stem = f"process_{process_index}."
      for name in files.listdir(str(directory)):
        if name.startswith(stem):
          files.copy(files.join(str(directory), name), os.path.join(tmp, name))
      local = os.path.join(tmp, f"process_{process_index}")
      tf.train.Checkpoint(iterator=self._iterator()).read(local).assert_consumed()
    self._consumed, self._fresh = int(state["batches"]), False
