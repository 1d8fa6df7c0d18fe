"""Where `train` and `eval` get their data: a small protocol, SNI the default.

The entry points never build a data pipeline themselves. They take a
`Dataset` (gin: `train.dataset = @datasets.SniDataset()`, or any object with
the methods below, e.g. a second corpus registered with seqio) and ask it for:

    prepare(mixture_or_task_name, task_feature_lengths)   register, validate
    vocabulary()                                          ids <-> text
    batches(spec: BatchSpec) -> BatchStream               this process's rows
    task_names(mixture_or_task_name) -> [str]             for per-task losses
    eval_examples(tasks, split) -> iterable of PreparedExample   decode-and-score

A `BatchStream` yields the feature converter's numpy dicts
(`decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`,
...) of `spec.batch_size` rows and saves its position in the run checkpoint:
`save_checkpoint(directory, process_index)`, `restore_checkpoint(directory,
process_index)` and `state()` (a JSON-able dict), as
`data.pipeline.BatchIterator` does; every process saves its own.

`eval_examples` returns a re-iterable (a list, or a stream such as
`data.tasks.EvalExamples` that reads again on each `iter`): the decoding
evaluator makes one pass per evaluation and holds one batch of token ids at
a time. A capped evaluation calls `eval_examples(tasks, split,
max_examples_per_task=N)`; a dataset without that keyword still serves the
uncapped one.

When `train.dataset` is not bound, the entry points build `SniDataset` from
their SNI settings (`train.sni_dir`, `train.sni`, `train.vocab_path`, ...),
so every gin file written before this seam keeps working. Nothing here
imports TensorFlow: `SniDataset` imports `mode_jax.data` when it is used.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mode_jax import files


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """What a caller asks of `Dataset.batches` (the rows of this process).

  Also the options of the SNI iterator (`data.pipeline.BatchIterator`,
  whose `PipelineConfig` is this class).

  Attributes:
    mixture_or_task_name: registered mixture or task (MIXTURE_OR_TASK_NAME).
    task_feature_lengths: {"inputs": N, "targets": M}.
    batch_size: rows per batch of this process (global batch / shards).
    split: "train", "validation" or "test".
    shuffle: shuffle (training).
    seed: seed of shuffles and mixture sampling.
    shard_id, num_shards: this process's data shard (`trainer.data_shard`).
    shards_per_host: data shards read by this process (`train.data_shards`);
      `batch_size` must divide by it.
    pack: pack several examples per row.
    num_epochs: None repeats forever (training); 1: one pass (evaluation),
      the last batch may have fewer rows.
    save_iterator: checkpoint the full iterator state, else the position only.
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
  shards_per_host: int = 1
  pack: bool = False
  num_epochs: int | None = None
  save_iterator: bool = True
  cache_in_memory: bool = False

  def __post_init__(self):
    lengths = dict(self.task_feature_lengths)
    if set(lengths) != {"inputs", "targets"} or any(
        not isinstance(v, int) or v < 1 for v in lengths.values()):
      raise ValueError("BatchSpec.task_feature_lengths must be {'inputs': N, "
                       f"'targets': M}} with positive ints, got {lengths}")
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f"BatchSpec.batch_size must be a positive int, got {self.batch_size!r}")
    if not isinstance(self.seed, int):
      raise ValueError(f"BatchSpec.seed must be an int, got {self.seed!r}")
    if not 0 <= self.shard_id < self.num_shards:
      raise ValueError(f"BatchSpec: need 0 <= shard_id < num_shards, got {self.shard_id}, "
                       f"{self.num_shards}")
    if (not isinstance(self.shards_per_host, int) or self.shards_per_host < 1
        or self.batch_size % self.shards_per_host):
      raise ValueError(f"BatchSpec.shards_per_host must be a positive int dividing "
                       f"batch_size={self.batch_size}, got {self.shards_per_host!r}")
    if self.num_epochs is not None and self.num_epochs < 1:
      raise ValueError(f"BatchSpec.num_epochs must be None or >= 1, got {self.num_epochs}")


@typing.runtime_checkable
class BatchStream(typing.Protocol):
  """An iterator of numpy batches whose position goes into run checkpoints."""

  def __next__(self) -> dict: ...

  def state(self) -> dict: ...

  def save_checkpoint(self, directory: str, process_index: int = 0) -> None: ...

  def restore_checkpoint(self, directory: str, process_index: int = 0) -> None: ...


@typing.runtime_checkable
class Dataset(typing.Protocol):
  """What `train` and `evaluate` need of a dataset (see the module docstring)."""

  def prepare(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int]) -> None:
    """Registers what `mixture_or_task_name` needs; raises naming a bad setting."""

  def vocabulary(self) -> Any:
    """The seqio vocabulary of the token ids (vocab_size, eos_id, pad_id, decode)."""

  def batches(self, spec: BatchSpec) -> BatchStream:
    """This process's batches of `spec`."""

  def task_names(self, mixture_or_task_name: str) -> list[str]:
    """The task names (as `BatchSpec.mixture_or_task_name`) of a mixture or task."""

  def eval_examples(self, tasks: Sequence[str] | None, split: str) -> Iterable:
    """Decode-and-score examples (`data.prepare.PreparedExample`) of `tasks`, re-iterable."""


# The data.SniConfig a training run used (prompts, budget, held-out split), in
# its MODEL_DIR: `evaluate` builds the same prompts and split from it.
SNI_CONFIG_FILE = "sni_config.json"

# What `SniDataset.loader` may name: the tf.data loader or the Grain loader.
LOADERS = ("tfdata", "grain")


@dataclasses.dataclass
class SniDataset:
  """Super-NaturalInstructions through SeqIO: the default `Dataset`.

  Attributes:
    sni_dir: SNI root (SNI_DIR); its tasks and mixtures (`sni_train`, ...)
      are registered by `prepare`. None: the mixture is registered elsewhere
      (any seqio mixture then works; `eval_examples` needs an SNI_DIR).
    sni: data.SniConfig (prompts, splits); None: the defaults with the
      inputs budget of TASK_FEATURE_LENGTHS.
    vocab_path: SentencePiece model (VOCAB_PATH); None: the shipped tiny one.
    allow_missing: accept a partial SNI copy.
    cache_dir: prepared TFRecords (default `~/.cache/mode_jax`).
    loader: "tfdata" (`data.pipeline.BatchIterator`, SeqIO's tf.data graph)
      or "grain" (`data.grain_pipeline.GrainBatchIterator`: ArrayRecord,
      index shuffle, a few integers of state; another data order).

  `prepare` remembers the lengths and the selected tasks (the default tasks
  of `eval_examples`), hence not frozen.
  """
  sni_dir: str | None = None
  sni: Any = None
  vocab_path: str | None = None
  allow_missing: bool = False
  cache_dir: str | None = None
  loader: str = "tfdata"
  _lengths: dict | None = dataclasses.field(default=None, init=False, repr=False)
  _selected: tuple | None = dataclasses.field(default=None, init=False, repr=False)

  def __post_init__(self):
    if self.loader not in LOADERS:
      raise ValueError(f"datasets.SniDataset.loader must be one of {', '.join(LOADERS)}, "
                       f"got {self.loader!r}")

  def _sni(self, lengths: Mapping[str, int] | None):
    from mode_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
    if self.sni is not None:
      return self.sni
    return data_config.SniConfig(**({"max_input_tokens": lengths["inputs"]} if lengths else {}))

  def register(self, task_feature_lengths: Mapping[str, int] | None = None, **kw):
    """`data.tasks.register_sni` of SNI_DIR (None without one); kw: its options."""
    if not self.sni_dir:
      return None
    from mode_jax.data import tasks  # pylint: disable=g-import-not-at-top
    if not files.isdir(self.sni_dir):
      raise FileNotFoundError(f"SNI_DIR {self.sni_dir!r} is not a directory")
    return tasks.register_sni(self.sni_dir, self._sni(task_feature_lengths),
                              vocab_path=self.vocab_path, cache_dir=self.cache_dir,
                              allow_missing=self.allow_missing, **kw)

  def prepare(self, mixture_or_task_name, task_feature_lengths):
    from mode_jax.data import tasks  # pylint: disable=g-import-not-at-top
    reg = self.register(task_feature_lengths)
    self._lengths = dict(task_feature_lengths)
    self._selected = reg.selected if reg else None
    tasks.require_examples(mixture_or_task_name)  # registered, with examples, files valid

  def write_run_config(self, model_dir: str, task_feature_lengths: Mapping[str, int]) -> None:
    """Writes the SniConfig of these prompts to MODEL_DIR/sni_config.json."""
    files.write_json(files.join(model_dir, SNI_CONFIG_FILE),
                     dataclasses.asdict(self._sni(task_feature_lengths)))

  def vocabulary(self):
    from mode_jax.data import vocab  # pylint: disable=g-import-not-at-top
    return vocab.get_vocabulary(self.vocab_path)

  def batches(self, spec: BatchSpec):
    if self.loader == "grain":
      from mode_jax.data import grain_pipeline  # pylint: disable=g-import-not-at-top
      return grain_pipeline.GrainBatchIterator.from_spec(spec)
    from mode_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.BatchIterator.from_spec(spec)

  def task_names(self, mixture_or_task_name):
    import seqio  # pylint: disable=g-import-not-at-top
    mix = seqio.get_mixture_or_task(mixture_or_task_name)
    return [t.name for t in mix.tasks] if isinstance(mix, seqio.Mixture) else [mix.name]

  def eval_examples(self, tasks, split="validation", max_examples_per_task=None):
    """SNI examples of `tasks` (SNI names; None: the default selection of `split`).

    Returns a `data.tasks.EvalExamples` (read lazily, again on every pass);
    `max_examples_per_task` caps each task (`data.splits.cap_instances`).
    """
    from mode_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
    if not self.sni_dir:
      raise ValueError("decode-and-score evaluation needs SNI_DIR (train.sni_dir or "
                       "datasets.SniDataset.sni_dir)")
    lengths = self._lengths
    if tasks is None and split != "test":
      tasks = self._selected
    if tasks is None:  # the train-split selection (validation) or the test split
      tasks = self.register(lengths, case_study=False, test=False,
                            split="test" if split == "test" else "train").selected
    return tasks_lib.eval_stream(self.sni_dir, list(tasks), self._sni(lengths), split=split,
                                 vocab_path=self.vocab_path, allow_missing=self.allow_missing,
                                 max_examples_per_task=max_examples_per_task)


def run_sni_config(model_dir: str, task_feature_lengths: Mapping[str, int]):
  """The data.SniConfig of the training run in `model_dir` (its sni_config.json).

  Without one (a base-only evaluation, a run trained before the file
  existed): the defaults with the inputs budget of TASK_FEATURE_LENGTHS, the
  prompts a training run without SniConfig bindings would have built.
  """
  from mode_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  path = files.join(model_dir, SNI_CONFIG_FILE)
  if files.exists(path):
    return data_config.SniConfig(**files.read_json(path))
  return data_config.SniConfig(max_input_tokens=task_feature_lengths["inputs"])


def check_dataset(dataset: Any, what: str = "train.dataset") -> Dataset:
  """`dataset` if it has every method of `Dataset`, else a ValueError naming the missing ones."""
  missing = [m for m in ("prepare", "vocabulary", "batches", "task_names", "eval_examples")
             if not callable(getattr(dataset, m, None))]
  if missing:
    raise ValueError(f"{what}={dataset!r} is not a datasets.Dataset: it lacks "
                     f"{', '.join(missing)}")
  return dataset


def finite_batches(dataset: Dataset, spec: BatchSpec) -> Iterator[dict]:
  """One pass over `spec` (num_epochs=1), every batch padded to `spec.batch_size` rows.

  Padding rows are zeros: zero loss weight, so they add nothing to a loss.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  stream = dataset.batches(dataclasses.replace(spec, num_epochs=1, shuffle=False))
  while True:
    try:
      batch = next(stream)
    except StopIteration:
      return
    rows = next(iter(batch.values())).shape[0]
    if rows < spec.batch_size:
      batch = {k: np.concatenate([v, np.zeros((spec.batch_size - rows,) + v.shape[1:],
                                              v.dtype)]) for k, v in batch.items()}
    yield batch
