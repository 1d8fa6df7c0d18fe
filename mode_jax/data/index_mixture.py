"""A mixture of tasks as a pure function: stream position -> (task, example index).

The Grain loader (`data.grain_pipeline`) reads examples by index, so the
whole data order is arithmetic on integers: no shuffle buffers, and any
position can be computed without reading the ones before it (resume is
O(1) in the step).

Training (`num_epochs=None`), for tasks with integer rates r_t (SeqIO's
`rate_num_examples`: train examples, optionally capped) and n_t examples in
this shard:

  * The stream is cut into *cycles* of W = sum_t r_t positions. A cycle holds
    task t exactly r_t times, at positions given by a seeded permutation of
    the multiset {t: r_t} (a fresh one per cycle). Over any whole cycle the
    proportions are exactly the SeqIO rates; within a cycle the task at a
    position has the SeqIO probability r_t / W (sampling without
    replacement of a cycle's slots instead of seqio's independent draws:
    same mean, lower variance).
  * Each task is an endless stream of its own: its m-th draw (counted over
    the cycles, in position order) is example `shuffle_e(m mod n_t)` of
    epoch e = m div n_t, where `shuffle_e` is a seeded permutation of
    [0, n_t), different per task and epoch (NumPy's Philox, cached for the
    current epoch of each task; grain's `index_shuffle` needs no memory but
    costs 0.07-4 ms a call at n_t of 600-10 in grain 0.2.18, which held a core
    to under 2,000 examples/s). Every example of a task is used once per
    task epoch, as seqio's per-task `repeat` + shuffle; without a cap (r_t = n_t on one shard) a
    cycle is exactly one epoch of every task: a global shuffle of all
    examples.

Evaluation passes (`num_epochs=E`) use r_t = n_t and E cycles: every example
of the shard exactly E times (seqio's mixture with `stop_on_empty_dataset=
False` also emits every example, in another interleave). `shuffle=False`
draws nothing at random: tasks in order, examples in file order.

Rates that are not all integers (a custom rate function) are scaled to
integers of total about 2**20 (relative error below 2**-20 of the sum).
Tasks with no example in this shard or rate 0 are left out, as seqio's
sampler drops empty datasets.

Memory: one cycle's table (2 int32 per position, W positions) per cached
cycle, at most two cached, and one int32 per example of the shard (the
current epoch's permutation of each task): about 20 MB for 5M examples.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Sequence

import numpy as np

INFINITE = 2**62  # length of a training stream: larger than any run reads


def key(*ints: int) -> int:
  """A 64-bit seed of a tuple of ints (stable across processes and versions)."""
  data = ",".join(str(int(i)) for i in ints).encode()
  return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def integer_rates(rates: Sequence[float]) -> np.ndarray:
  """The rates as int64: themselves if all integral, else scaled to a sum near 2**20."""
  rates = np.asarray(rates, np.float64)
  if np.any(rates < 0) or not np.all(np.isfinite(rates)):
    raise ValueError(f"mixture rates must be finite and >= 0, got {rates.tolist()}")
  if np.all(rates == np.round(rates)):
    return rates.astype(np.int64)
  scaled = np.round(rates * (2**20 / rates.sum())).astype(np.int64)
  return np.where(rates > 0, np.maximum(scaled, 1), 0)


class IndexMixture:
  """Maps stream positions to (task, example index) for one shard's stream.

  Args:
    counts: examples of each task in this shard.
    rates: mixing rate of each task (SeqIO's `Mixture.get_rate`).
    seed: the stream's seed.
    stream: ints that make this stream's randomness its own (the shard).
    shuffle: shuffle (else tasks in order, examples in file order).
    num_epochs: None: endless (training); E: E passes over every example.

  Raises:
    ValueError: endless, and no task has both an example and a positive rate
      (a finite pass over no example is an empty stream).
  """

  def __init__(self, counts: Sequence[int], rates: Sequence[float], seed: int,
               stream: Sequence[int] = (), shuffle: bool = True,
               num_epochs: int | None = None):
    counts = np.asarray(counts, np.int64)
    rates = integer_rates(rates)
    if len(counts) != len(rates):
      raise ValueError(f"IndexMixture: {len(counts)} counts but {len(rates)} rates")
    if num_epochs is not None:  # evaluation: every example, rates do not matter
      rates = counts
    keep = (counts > 0) & (rates > 0)
    if not keep.any() and num_epochs is None:  # a finite pass over nothing is just empty
      raise ValueError("IndexMixture: no task has both an example in this shard and a "
                       f"positive rate (counts {counts.tolist()[:10]}, rates "
                       f"{rates.tolist()[:10]})")
    self.tasks = np.nonzero(keep)[0]  # indices into `counts` of the mixed tasks
    self._n = counts[keep]
    self._r = rates[keep]
    self._start = np.concatenate([[0], np.cumsum(self._r)[:-1]]).astype(np.int64)
    self.cycle_length = int(self._r.sum())
    self._seed, self._stream = int(seed), tuple(int(s) for s in stream)
    self._shuffle, self._num_epochs = shuffle, num_epochs
    self._cycles: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._perms: dict[int, tuple[int, np.ndarray]] = {}
    self._lock = threading.Lock()  # grain's reader threads share the cycle cache

  def __getstate__(self) -> dict:  # grain worker processes get a copy, without the cache
    return {k: v for k, v in self.__dict__.items() if k not in ("_cycles", "_perms", "_lock")}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state, _cycles={}, _perms={}, _lock=threading.Lock())

  def __len__(self) -> int:
    if self._num_epochs is None:
      return INFINITE
    return self._num_epochs * self.cycle_length

  def _cycle(self, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(task slot, rank among the task's positions) of each position of cycle c."""
    with self._lock:
      table = self._cycles.get(c)
      if table is None:
        slots = np.repeat(np.arange(len(self._r), dtype=np.int32), self._r)
        if self._shuffle:
          rng = np.random.Generator(np.random.Philox(key(self._seed, *self._stream, 1, c)))
          slots = rng.permutation(slots)
        # Rank of each position among its task's positions, in position order
        # (a stable sort groups each task's positions, in order).
        order = np.argsort(slots, kind="stable")
        rank = np.empty(len(slots), np.int32)
        rank[order] = np.arange(len(slots), dtype=np.int64) - np.repeat(self._start, self._r)
        table = (slots, rank)
        if len(self._cycles) >= 2:
          self._cycles.pop(min(self._cycles))
        self._cycles[c] = table
    return table

  def __call__(self, position: int) -> tuple[int, int]:
    """(task, example index in this shard's file) at stream `position`.

    `task` indexes the `counts` given to the constructor.
    """
    if not 0 <= position < len(self):
      raise IndexError(f"position {position} outside the stream of length {len(self)}")
    c, o = divmod(int(position), self.cycle_length)
    slots, rank = self._cycle(c)
    t = int(slots[o])
    m = c * int(self._r[t]) + int(rank[o])  # the task's m-th draw
    n = int(self._n[t])
    epoch, j = divmod(m, n)
    if self._shuffle and n > 1:
      j = int(self._permutation(t, epoch)[j])
    return int(self.tasks[t]), int(j)

  def _permutation(self, t: int, epoch: int) -> np.ndarray:
    """The seeded order of task t's examples in `epoch` (cached: one epoch per task)."""
    with self._lock:
      cached = self._perms.get(t)
      if cached is None or cached[0] != epoch:
        rng = np.random.Generator(np.random.Philox(
            key(self._seed, *self._stream, 2, int(self.tasks[t]), epoch)))
        cached = (epoch, rng.permutation(int(self._n[t])).astype(np.int32))
        self._perms[t] = cached
    return cached[1]
