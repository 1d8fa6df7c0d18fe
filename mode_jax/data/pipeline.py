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

Resuming: the stream is deterministic given (seed, shard); `state()` records
the batches consumed and `restore(state)` rebuilds the stream and skips them
(cost: the skipped batches are recomputed, about as fast as training reads
them; see benchmarks/data_pipeline.py).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Options of a `BatchIterator`.

  Attributes:
    mixture_or_task_name: registered seqio task or mixture.
    task_feature_lengths: {"inputs": N, "targets": M} (TASK_FEATURE_LENGTHS).
    batch_size: examples (or packed rows) per batch, per host.
    split: "train", "validation" or "test".
    shuffle: shuffle (training).
    seed: seed of the shuffles and of the mixture sampling.
    shard_id: this process's shard (jax.process_index()).
    num_shards: number of shards (jax.process_count()).
    pack: pack several examples per row.
    num_epochs: None repeats forever (training default); 1 for evaluation.
    cache_in_memory: let seqio keep small tasks (< 10k examples per shard)
      in memory after the first pass. Faster, but on the full SNI data
      nearly every task qualifies (several GB per host), so it is off by
      default.
  """
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  batch_size: int
  split: str = "train"
  shuffle: bool = True
  seed: int = 0
  shard_id: int = 0
  num_shards: int = 1
  pack: bool = False
  num_epochs: int | None = None
  cache_in_memory: bool = False

  def __post_init__(self):
    lengths = dict(self.task_feature_lengths)
    if set(lengths) != {"inputs", "targets"} or any(
        not isinstance(v, int) or v < 1 for v in lengths.values()):
      raise ValueError("PipelineConfig.task_feature_lengths must be {'inputs': N, "
                       f"'targets': M}} with positive ints, got {lengths}")
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f"PipelineConfig.batch_size must be a positive int, got "
                       f"{self.batch_size!r}")
    if not isinstance(self.seed, int):
      raise ValueError(f"PipelineConfig.seed must be an int, got {self.seed!r}")
    if not 0 <= self.shard_id < self.num_shards:
      raise ValueError(f"PipelineConfig: need 0 <= shard_id < num_shards, got "
                       f"{self.shard_id}, {self.num_shards}")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"PipelineConfig.num_epochs must be None or >= 1, got "
                       f"{self.num_epochs}")


def make_dataset(cfg: PipelineConfig, skip_batches: int = 0) -> tf.data.Dataset:
  """The batched tf.data pipeline of `cfg`, after `skip_batches` batches."""
  lengths = dict(cfg.task_feature_lengths)
  # As seqio.get_dataset, which does not pass try_in_mem_cache on.
  ds = seqio.get_mixture_or_task(cfg.mixture_or_task_name).get_dataset(
      lengths, split=cfg.split, shuffle=cfg.shuffle, seed=cfg.seed,
      shard_info=seqio.ShardInfo(cfg.shard_id, cfg.num_shards), num_epochs=cfg.num_epochs,
      try_in_mem_cache=cfg.cache_in_memory)
  ds = seqio.DecoderFeatureConverter(pack=cfg.pack)(ds, task_feature_lengths=lengths)
  ds = ds.batch(cfg.batch_size, drop_remainder=cfg.num_epochs is None)
  ds = ds.map(lambda b: {k: tf.cast(v, tf.int32) for k, v in b.items()})
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(tf.data.AUTOTUNE)


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
               num_epochs: int | None = None, cache_in_memory: bool = False):
    self.config = PipelineConfig(mixture_or_task_name, dict(task_feature_lengths),
                                 batch_size, split, shuffle, seed, shard_id, num_shards,
                                 pack, num_epochs, cache_in_memory)
    self._consumed = 0
    self._it = None

  def _iterator(self) -> Iterator:
    if self._it is None:
      self._it = make_dataset(self.config, self._consumed).as_numpy_iterator()
    return self._it

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator())
    self._consumed += 1
    return batch

  def state(self) -> dict:
    """Position of the stream: JSON-serialisable."""
    c = self.config
    return {"batches": self._consumed, "seed": c.seed, "shard_id": c.shard_id,
            "num_shards": c.num_shards, "name": c.mixture_or_task_name,
            "batch_size": c.batch_size, "pack": c.pack}

  def restore(self, state: Mapping) -> None:
    """Continues the stream after `state["batches"]` batches.

    Raises:
      ValueError: `state` was saved by an iterator with other settings.
    """
    mine = self.state()
    for k in ("seed", "shard_id", "num_shards", "name", "batch_size", "pack"):
      if k in state and state[k] != mine[k]:
        raise ValueError(f"BatchIterator.restore: state[{k!r}]={state[k]!r} but this "
                         f"iterator has {mine[k]!r}")
    self._consumed = int(state["batches"])
    self._it = None
