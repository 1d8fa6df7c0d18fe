"""Batches of decoder features through Grain over ArrayRecord: index-based, O(1) resume.

`GrainBatchIterator` is a `datasets.BatchStream` for a `datasets.BatchSpec`
on a registered SNI mixture or task (`data.tasks.register_sni`), with the
rows `data.pipeline.BatchIterator` yields (the same four features, int32
[batch_size, inputs + targets]; `data.decoder_features` is seqio's
converter in NumPy), but no per-task tf.data pipeline and no shuffle buffer:

  * Examples: each task's prepared shard as an ArrayRecord file
    (`data.arrayrecord`, beside the TFRecord in the TaskStore's cache), read
    by random access through one grain `ArrayRecordDataSource` per shard.
  * Order: `data.index_mixture` maps stream position -> (task, example)
    with the rates SeqIO's mixture would use (`Mixture.get_rate`, i.e.
    `tasks.rate_num_examples` with the registration's cap) and a global
    index shuffle per task and epoch (a seeded permutation). The sequence
    of tasks is seeded per shard, so the rows of one global batch are drawn
    independently (seqio draws the same task sequence on every shard).
  * Sharding: stream s of S reads the TaskStore shard (s, S), the examples
    s, s + S, ... of each task: disjoint and complete over the shards. As
    in BatchIterator, a process reads the k = `shards_per_host` streams
    `shard_id * k + j` of `num_shards * k`, `batch_size / k` rows from
    each, concatenated in stream order, so one process with k = N yields
    the global batches of N processes with k = 1. A finite pass (evaluation)
    with k > 1 stops when every stream is exhausted; a batch holds the rows
    of the streams not yet exhausted (BatchIterator's zip stops at the
    first).
  * Readers: `read_threads` grain threads read and convert whole batches in
    parallel (`grain.ReadOptions`), `workers` > 0 adds grain worker
    processes (`mp_prefetch`); the output is the same for any numbers,
    since every batch is a pure function of its index.
  * Packing (`pack=True`): seqio's packer, exactly (`decoder_features.pack`:
    windows of L consecutive examples packed next-fit), with grain reading
    whole windows (`data.grain_packing`); the test compares the rows with
    seqio's converter.
  * State: `state()` is a dict of integers and settings: the batches consumed
    (and, packed, per stream the window of the next row and the rows taken
    from it). `save_checkpoint` writes it as `process_<i>.json` through
    `mode_jax.files` (local or gs://);
    `restore_checkpoint` sets it in constant time whatever the step
    (unpacked: no read at all; packed: one window of L examples is re-read).

A state written by the tf.data loader (`pipeline` key, `process_<i>.index`
files) is rejected with a ValueError naming the file: its position is one of
another data order, and continuing there would silently change the data the
run sees. `BatchSpec.save_iterator` and `cache_in_memory` have no effect
here (the state is always small and nothing is cached in memory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Mapping

import numpy as np

from mode_jax import datasets
from mode_jax import files
from mode_jax.data import arrayrecord
from mode_jax.data import decoder_features
from mode_jax.data import grain_packing
from mode_jax.data import index_mixture

STATE_VERSION = 1
# Settings a saved state must share with the iterator that restores it.
_CHECKED = ("name", "split", "seed", "shard_id", "num_shards", "shards_per_host", "batch_size",
            "pack", "shuffle", "num_epochs", "task_feature_lengths", "mixture")


@dataclasses.dataclass(frozen=True)
class Member:
  """One task of the mixture: its seqio name, rate and ArrayRecord store."""
  name: str
  rate: float
  store: arrayrecord.ArrayRecordStore


def mixture_members(name: str, split: str = "train"):
  """(members, vocabulary) of a registered SNI mixture or task, with SeqIO's rates.

  Raises:
    ValueError: `name` is not registered (nearest names listed), or one of
      its tasks is not an SNI task of `tasks.register_sni`.
    tasks.EmptyMixtureError: no task has an example in `split`.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  from mode_jax.data import tasks  # pylint: disable=g-import-not-at-top
  tasks.require_examples(name, split)  # the loaders' error for a bad MIXTURE_OR_TASK_NAME
  mix = seqio.get_mixture_or_task(name)
  members = mix.tasks if isinstance(mix, seqio.Mixture) else [mix]
  out, vocabulary = [], None
  for task in members:
    source = task.source
    if not isinstance(source, tasks.SniSource):
      raise ValueError(f"the grain loader reads SNI tasks registered by data.tasks."
                       f"register_sni; task {task.name!r} of {name!r} has a "
                       f"{type(source).__name__} source (use loader='tfdata')")
    # SniSource keeps its TaskStore and vocabulary private; the grain loader
    # reads the same prepared examples, so it borrows them.
    store, vocabulary = source._store, source._vocabulary  # pylint: disable=protected-access
    rate = mix.get_rate(task) if isinstance(mix, seqio.Mixture) else 1.0
    out.append(Member(task.name, float(rate), arrayrecord.ArrayRecordStore(store)))
  return out, vocabulary


class _StreamSource:
  """One shard's stream as a grain random-access source: position -> features.

  Picklable (grain worker processes get a copy; the ArrayRecord readers
  reopen there).
  """

  def __init__(self, paths, counts, rates, spec: datasets.BatchSpec, stream: tuple[int, int],
               eos_id: int):
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    self.mixture = index_mixture.IndexMixture(counts, rates, spec.seed, stream, spec.shuffle,
                                              spec.num_epochs)
    present = [i for i, n in enumerate(counts) if n > 0]
    self._offset = np.zeros(len(counts), np.int64)
    self._offset[present] = np.concatenate([[0], np.cumsum([counts[i] for i in present])[:-1]])
    self._records = (array_record_data_source.ArrayRecordDataSource(
        [paths[i] for i in present]) if present else None)  # None: an empty finite pass
    self._lengths = dict(spec.task_feature_lengths)
    self._eos, self._pack = eos_id, spec.pack

  def __len__(self) -> int:
    return len(self.mixture)

  def record(self, position: int) -> arrayrecord.Record:
    task, index = self.mixture(position)
    return arrayrecord.decode(self._records[int(self._offset[task]) + index])

  def __getitem__(self, position: int) -> dict:
    rec = self.record(position)
    fn = decoder_features.segment if self._pack else decoder_features.unpacked
    return fn(rec.inputs, rec.targets, self._lengths, self._eos)


def _absl_flags_parsed() -> None:
  """Lets grain's worker processes read their absl flags outside an absl app.

  grain 0.2.18 reads absl flags (their defaults) when it starts workers and
  raises UnparsedFlagAccessError where nothing parsed argv (a library call,
  pytest): google/grain issues 1355 and 1360, whose workaround this is.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class GrainBatchIterator:
  """A `datasets.BatchStream` of `spec` read through Grain (see the module docstring).

  Example:
    it = GrainBatchIterator(datasets.BatchSpec("sni_train", {"inputs": 896,
                            "targets": 128}, 16, shard_id=jax.process_index(),
                            num_shards=jax.process_count()))
    batch = next(it)        # {"decoder_target_tokens": int32[16, 1024], ...}
    it.save_checkpoint(d, jax.process_index())
    it2 = GrainBatchIterator(same spec); it2.restore_checkpoint(d, jax.process_index())

  Args:
    spec: the request (`datasets.BatchSpec`).
    read_threads: grain reader threads per stream (0: read in the caller).
    workers: grain worker processes (0: none).
    prefetch: batches (packed: windows) each stream's readers keep ready.

  Raises:
    ValueError: a bad option (named), or a mixture the loader cannot read.
  """

  def __init__(self, spec: datasets.BatchSpec, read_threads: int = 2, workers: int = 0,
               prefetch: int = 4):
    for field, value in (("read_threads", read_threads), ("workers", workers),
                         ("prefetch", prefetch)):
      if not isinstance(value, int) or value < 0:
        raise ValueError(f"GrainBatchIterator.{field} must be an int >= 0, got {value!r}")
    self.spec = spec
    self._options = (read_threads, workers, prefetch)
    self._consumed = 0
    self._sources = None
    self._its = None
    self._done = None
    self._fingerprint = None

  @classmethod
  def from_spec(cls, spec: datasets.BatchSpec, **options) -> "GrainBatchIterator":
    """The iterator of a `Dataset.batches` request."""
    return cls(spec, **options)

  def _streams(self) -> list[tuple[int, int]]:
    k = self.spec.shards_per_host
    return [(self.spec.shard_id * k + j, self.spec.num_shards * k) for j in range(k)]

  def _build_sources(self) -> None:
    if self._sources is not None:
      return
    members, vocabulary = mixture_members(self.spec.mixture_or_task_name, self.spec.split)
    rates = [m.rate for m in members]
    self._sources = []
    for stream in self._streams():
      metas = [m.store.ensure(vocabulary, stream) for m in members]
      counts = [meta["counts"][self.spec.split] for meta in metas]
      paths = [meta["paths"][self.spec.split] for meta in metas]
      self._sources.append(_StreamSource(paths, counts, rates, self.spec, stream,
                                         vocabulary.eos_id))
    digest = json.dumps([[m.name for m in members], rates])
    self._fingerprint = hashlib.sha256(digest.encode()).hexdigest()[:16]

  def _read(self, ds, options):
    """grain's iterator of a MapDataset: reader threads, worker processes."""
    import grain  # pylint: disable=g-import-not-at-top
    it_ds = ds.to_iter_dataset(options)
    if self._options[1]:
      _absl_flags_parsed()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._options[1]))
    return iter(it_ds)

  def _iterator(self, source: _StreamSource, rows: int, position=None):
    import grain  # pylint: disable=g-import-not-at-top
    read_threads, _, prefetch = self._options
    options = grain.ReadOptions(num_threads=read_threads,
                                prefetch_buffer_size=prefetch if read_threads else 0)
    drop = self.spec.num_epochs is None
    if not self.spec.pack:
      # Whole batches are the grain elements: any thread or worker count
      # reads batch b from positions b * rows ..., so output never depends on it.
      ds = grain.MapDataset.source(source).batch(rows, drop_remainder=drop)
      return self._read(ds.slice(slice(self._consumed, None)), options)
    windows = grain.MapDataset.source(grain_packing.Windows(
        source, sum(self.spec.task_feature_lengths.values())))
    return grain_packing.PackedBatches(
        lambda w: self._read(windows.slice(slice(w, None)), options), rows, drop,
        position or (0, 0))

  def build(self, positions=None) -> None:
    """Opens the sources and readers now (else at the first batch)."""
    self._build_sources()
    if self._its is None:
      rows = self.spec.batch_size // self.spec.shards_per_host
      positions = positions or [None] * len(self._sources)
      self._its = [self._iterator(s, rows, p) for s, p in zip(self._sources, positions)]
      self._done = [False] * len(self._its)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self.build()
    parts = []
    for j, it in enumerate(self._its):
      if self._done[j]:
        continue
      try:
        parts.append(next(it))
      except StopIteration:
        self._done[j] = True
    if not parts:
      raise StopIteration
    self._consumed += 1
    if len(parts) == 1:
      return {k: np.asarray(v, np.int32) for k, v in parts[0].items()}
    return {k: np.concatenate([p[k] for p in parts]).astype(np.int32) for k in parts[0]}

  def example_ids(self, batch_index: int) -> list[str]:
    """Instance ids of the rows of batch `batch_index` (unpacked; computed, not read in order)."""
    if self.spec.pack:
      raise ValueError("GrainBatchIterator.example_ids needs pack=False")
    self._build_sources()
    rows = self.spec.batch_size // self.spec.shards_per_host
    out = []
    for source in self._sources:
      for pos in range(batch_index * rows, min((batch_index + 1) * rows, len(source))):
        out.append(source.record(pos).id)
    return out

  def state(self) -> dict:
    """The position and the settings it is valid for: JSON-serialisable."""
    s = self.spec
    out = {"loader": "grain", "version": STATE_VERSION, "batches": self._consumed,
           "name": s.mixture_or_task_name, "split": s.split, "seed": s.seed,
           "shard_id": s.shard_id, "num_shards": s.num_shards,
           "shards_per_host": s.shards_per_host, "batch_size": s.batch_size, "pack": s.pack,
           "shuffle": s.shuffle, "num_epochs": s.num_epochs,
           "task_feature_lengths": dict(s.task_feature_lengths)}
    self._build_sources()
    out["mixture"] = self._fingerprint
    if s.pack and self._its is not None:
      out["packer"] = [it.position() for it in self._its]
    return out

  def restore(self, state: Mapping, what: str = "GrainBatchIterator.restore: state") -> None:
    """Continues the stream at `state` in constant time (no batch is re-read).

    Raises:
      ValueError: `state` comes from the tf.data loader or from other settings.
    """
    if "pipeline" in state or state.get("loader") != "grain":
      raise ValueError(f"{what} was saved by the tf.data loader (data.pipeline."
                       "BatchIterator), whose data order differs: resume this run with "
                       "datasets.SniDataset.loader='tfdata', or start a new run with "
                       "loader='grain'")
    mine = self.state()
    for k in _CHECKED:
      if state.get(k) != mine[k]:
        raise ValueError(f"{what}[{k!r}]={state.get(k)!r} but this iterator has {mine[k]!r}")
    self._consumed = int(state["batches"])
    self._its = None
    if self.spec.pack:
      positions = state.get("packer")
      if (positions or self._consumed) and len(positions or ()) != self.spec.shards_per_host:
        raise ValueError(f"{what}['packer']={positions!r}: a packed stream at batch "
                         f"{self._consumed} needs [window, row] of each of its "
                         f"{self.spec.shards_per_host} streams")
      self.build(positions)

  def _path(self, directory: str, process_index: int) -> str:
    return files.join(str(directory), f"process_{process_index}.json")  # may be gs://

  def save_checkpoint(self, directory: str, process_index: int = 0) -> None:
    """Writes this process's state as `process_<i>.json` under `directory`."""
    files.makedirs(str(directory))
    files.write_text(self._path(directory, process_index), json.dumps(self.state()))

  def restore_checkpoint(self, directory: str, process_index: int = 0) -> None:
    """Continues from a `save_checkpoint` in constant time, whatever the step.

    Raises:
      FileNotFoundError: no state of process `process_index` under `directory`.
      ValueError: the state was written by the tf.data loader or by an
        iterator with other settings (the message names the file and field).
    """
    path = self._path(directory, process_index)
    if not files.exists(path):
      raise FileNotFoundError(f"no data iterator state {path!r} (was the checkpoint "
                              "written by fewer processes?)")
    state = json.loads(files.read_text(path))
    if files.exists(files.join(str(directory), f"process_{process_index}.index")):
      state = {**state, "pipeline": state.get("pipeline", "tf.data checkpoint files")}
    self.restore(state, f"data iterator state {path!r}")
