"""SeqIO tasks and mixtures of Super-NaturalInstructions.

`register_sni(sni_dir, ...)` registers one `seqio.Task` per selected SNI task
(`sni_task1146_country_capital`; characters seqio rejects, such as "-", become
"_") with splits "train" / "validation" (the seeded 90/10 split) and "test"
(first 100 instances), and the mixtures

    <prefix>_train        the selected tasks (default: English train split),
                          examples-proportional with an optional cap (T5X)
    <prefix>_case_study   the paper's 15 case-study tasks that are present
    <prefix>_test         the English tasks of the default test split

Registration is lazy and cheap: it reads the split files and each task's
header (for the language filter), not the instances. A task file is parsed
when its example count is first needed (mixing rates), and tokenized to a
TFRecord under the cache dir when its dataset is first read. Both are cached.

Eval helpers: `eval_stream` gives plain records (task, id, prompt,
references, category) for a decode-and-score loop, read lazily and
re-iterable (`eval_examples`: the same as a list).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import os
import re
from typing import Sequence

import seqio
import tensorflow as tf

from mode_jax.data import config as config_lib
from mode_jax.data import metrics
from mode_jax.data import prepare
from mode_jax.data import records
from mode_jax.data import sni
from mode_jax.data import splits
from mode_jax.data import vocab as vocab_lib

SniConfig = config_lib.SniConfig


def task_registry_name(task: str, prefix: str = "sni") -> str:
  """seqio name of an SNI task: `<prefix>_<task>` with invalid characters as "_"."""
  return re.sub(r"[^\w.:]", "_", f"{prefix}_{task}")


# Features of a shuffled (training) read; see SniSource.
TRAIN_FEATURES = ("inputs", "targets", "id")


class SniSource(seqio.DataSource):
  """Reads one task's prepared TFRecord (prepared lazily on first read).

  Shards at the examples (`supports_arbitrary_sharding`), so any number of
  hosts reads disjoint parts of every task; each host prepares (tokenizes)
  only its own shard (`prepare.TaskStore.ensure`), the examples
  `Dataset.shard(num_shards, index)` of the whole split would give.

  A shuffled read (training) yields `inputs`, `targets` and `id` only: the
  Task shuffles each task in a buffer of 1000 examples, and the text
  features (prompt, target, references: nearly half the bytes) would fill
  those buffers, the host's memory and every iterator checkpoint although
  training never reads them. Unshuffled reads (evaluation, inspection) have
  every feature. The order of the examples is the same either way.
  """

  def __init__(self, store: prepare.TaskStore, vocabulary):
    super().__init__(splits=splits.SPLITS)
    self._store = store
    self._vocabulary = vocabulary

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [self._store.ensure(split, self._vocabulary)]

  def num_input_examples(self, split: str) -> int:
    return self._store.counts()[split]

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del seed, sequence_length, use_cached, num_epochs  # The Task shuffles.
    shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    ds = tf.data.TFRecordDataset(self._store.ensure(split, self._vocabulary, shard))
    desc = prepare.feature_description(tf)
    if shuffle:  # Training: no text in the shuffle buffers (see the class docstring).
      desc = {k: desc[k] for k in TRAIN_FEATURES}

    def parse(records):  # Batched parsing is several times faster per example.
      ex = tf.io.parse_example(records, desc)
      ex["inputs"] = tf.cast(ex["inputs"], tf.int32)
      ex["targets"] = tf.cast(ex["targets"], tf.int32)
      return ex

    return ds.batch(128).map(parse, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def trim_inputs_left(dataset: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
  """Keeps the last `sequence_length["inputs"]` input tokens (query intact)."""
  if not sequence_length or sequence_length.get("inputs") is None:
    return dataset
  n = sequence_length["inputs"]

  def trim(ex):
    ex = dict(ex)
    ex["inputs"] = ex["inputs"][-n:]
    return ex

  return dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)


def postprocess(output, example=None, is_target=False):
  """Targets become the example's list of references; predictions stay text."""
  if is_target and example is not None and "references" in example:
    return [r.decode() if isinstance(r, bytes) else str(r) for r in example["references"]]
  return output


def rate_num_examples(task: seqio.Task, maximum: int | None = None) -> float:
  """Examples-proportional rate: train examples, clipped at `maximum` (T5X)."""
  n = task.num_input_examples("train")
  return float(n if maximum is None else min(n, maximum))


@dataclasses.dataclass(frozen=True)
class SniRegistration:
  """What `register_sni` registered.

  Attributes:
    tasks: seqio task names, in selection order.
    sni_tasks: the corresponding SNI task names.
    mixtures: {"train" | "case_study" | "test": seqio mixture name}.
    missing: requested tasks whose file is absent (allow_missing).
    non_english: tasks dropped by the English filter.
    selected: the SNI names of the main selection (the tasks of the "train"
      mixture), without the case-study and test-split extras.
  """
  tasks: tuple[str, ...]
  sni_tasks: tuple[str, ...]
  mixtures: dict
  missing: tuple[str, ...] = ()
  non_english: tuple[str, ...] = ()
  selected: tuple[str, ...] = ()

  @property
  def names(self) -> tuple[str, ...]:
    """All registered names, tasks then mixtures."""
    return self.tasks + tuple(self.mixtures.values())


def _register_task(sni_dir, task: str, cfg, vocabulary, vocab_path, cache_dir, prefix) -> str:
  name = task_registry_name(task, prefix)
  store = prepare.TaskStore(sni.task_path(sni_dir, task), cfg, vocab_path, cache_dir)
  seqio.TaskRegistry.remove(name)  # Idempotent: the latest call wins.
  seqio.TaskRegistry.add(
      name, source=SniSource(store, vocabulary),
      output_features={
          "inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
          "targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)},
      preprocessors=[trim_inputs_left, seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=postprocess, metric_fns=[metrics.seqio_metric_fn])
  return name


def _add_mixture(name: str, task_names: Sequence[str], mixing_cap) -> str | None:
  seqio.MixtureRegistry.remove(name)
  if not task_names:
    logging.warning("SNI: mixture %s has no tasks; not registered", name)
    return None
  seqio.MixtureRegistry.add(
      name, list(task_names),
      default_rate=functools.partial(rate_num_examples, maximum=mixing_cap),
      sample_fn=functools.partial(tf.data.Dataset.sample_from_datasets,
                                  stop_on_empty_dataset=False))
  return name


def register_sni(sni_dir: str | os.PathLike, cfg: SniConfig = SniConfig(),
                 vocab_path: str | None = None, cache_dir: str | None = None,
                 split: str = "train", tasks: Sequence[str] | None = None,
                 english_only: bool = True, allow_missing: bool = False,
                 prefix: str = "sni", mixing_cap: int | None = None,
                 case_study: bool = True, test: bool = True) -> SniRegistration:
  """Registers the SNI seqio tasks and mixtures (idempotent).

  Args:
    sni_dir: root of the SNI copy (gin: SNI_DIR at the entry points).
    cfg: split / prompt / budget options.
    vocab_path: SentencePiece model, local or gs:// (Gemma's for real runs);
      None: the shipped tiny 1024-piece model.
    cache_dir: where prepared TFRecords go (default `~/.cache/mode_jax`;
      gs:// keeps each host's prepared shard across preemptions).
    split: split file of the main selection ("train" as the paper).
    tasks: explicit task names or ids instead of `split`.
    english_only: keep only tasks whose three language fields are ["English"].
    allow_missing: accept a partial copy; missing tasks are counted, logged
      and returned; without it a missing task file raises, naming it.
    prefix: prefix of every registered name.
    mixing_cap: cap of the examples-proportional rate (None: no cap).
    case_study: also register `<prefix>_case_study`.
    test: also register the test-split tasks and `<prefix>_test`.

  Returns:
    The `SniRegistration` (task and mixture names, missing tasks).
  """
  sni_dir = os.fspath(sni_dir)
  vocab_path = vocab_path or vocab_lib.default_path(1024)
  vocabulary = vocab_lib.get_vocabulary(vocab_path)
  cache_dir = cache_dir or prepare.DEFAULT_CACHE_DIR
  sel = sni.select_tasks(sni_dir, split, tasks, english_only, allow_missing)
  missing, non_english = list(sel.missing), list(sel.non_english)
  registered = {}

  def reg(task_list):
    for t in task_list:
      if t not in registered:
        registered[t] = _register_task(sni_dir, t, cfg, vocabulary, vocab_path, cache_dir,
                                       prefix)
    return [registered[t] for t in task_list]

  main = reg(sel.names)
  mixtures = {"train": _add_mixture(f"{prefix}_train", main, mixing_cap)}
  if case_study:
    cs = sni.select_tasks(sni_dir, None, sni.CASE_STUDY, english_only, allow_missing)
    missing += [t for t in cs.missing if t not in missing]
    mixtures["case_study"] = _add_mixture(f"{prefix}_case_study", reg(cs.names), mixing_cap)
  if test:
    ts = sni.select_tasks(sni_dir, "test", None, english_only, allow_missing)
    missing += [t for t in ts.missing if t not in missing]
    non_english += [t for t in ts.non_english if t not in non_english]
    mixtures["test"] = _add_mixture(f"{prefix}_test", reg(ts.names), mixing_cap)
  mixtures = {k: v for k, v in mixtures.items() if v}
  if missing:
    logging.warning("SNI: registered %d tasks; %d requested tasks missing (allow_missing)",
                    len(registered), len(missing))
  return SniRegistration(tuple(registered.values()), tuple(registered), mixtures,
                         tuple(missing), tuple(non_english), tuple(sel.names))


class EmptyMixtureError(ValueError):
  """A registered mixture or task whose split has no examples at all."""


def require_examples(name: str, split: str = "train") -> dict[str, int]:
  """Checks that `name` is registered and its `split` has examples; returns the counts.

  Called before a model is built, so a misspelled MIXTURE_OR_TASK_NAME or a
  selection without examples fails at start-up, not as a bare StopIteration
  at the first batch. For SNI tasks this parses each task file once (the
  counts are cached on disk), so a malformed file raises `SniFormatError`
  naming it here too.

  Args:
    name: seqio mixture or task name (MIXTURE_OR_TASK_NAME).
    split: the split that will be read.

  Returns:
    {seqio task name: number of `split` examples} (tasks whose source cannot
    count are left out).

  Raises:
    ValueError: `name` is not registered (the message lists the nearest
      registered names).
    EmptyMixtureError: no task of `name` has an example in `split`.
  """
  try:
    mix = seqio.get_mixture_or_task(name)
  except ValueError as e:
    known = sorted(set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names()))
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    mixtures = sorted(seqio.MixtureRegistry.names())
    raise ValueError(
        f"MIXTURE_OR_TASK_NAME {name!r} is not a registered seqio mixture or task"
        + (f"; did you mean {' or '.join(map(repr, near))}?" if near else "")
        + f" Registered mixtures: {', '.join(mixtures[:20]) or 'none'}"
        + (" ..." if len(mixtures) > 20 else "")
        + " (SNI mixtures are registered from SNI_DIR)") from e
  members = mix.tasks if isinstance(mix, seqio.Mixture) else [mix]
  counts = {}
  for task in members:
    try:
      n = task.num_input_examples(split)
    except (NotImplementedError, TypeError):
      n = None
    if n is not None:
      counts[task.name] = int(n)
  if counts and len(counts) == len(members) and not sum(counts.values()):
    raise EmptyMixtureError(
        f"{name!r} has no {split!r} examples: " + ", ".join(
            f"{t}: 0" for t in list(counts)[:10]) + (" ..." if len(counts) > 10 else ""))
  return counts


def eval_examples(sni_dir: str | os.PathLike, task_names: Sequence[str],
                  cfg: SniConfig = SniConfig(), split: str = "validation",
                  vocab_path: str | None = None, fit: bool = True,
                  allow_missing: bool = False,
                  max_examples_per_task: int | None = None) -> list[prepare.PreparedExample]:
  """`eval_stream` read into a list (small selections, scripts and tests)."""
  return list(eval_stream(sni_dir, task_names, cfg, split, vocab_path, fit, allow_missing,
                          max_examples_per_task))


def eval_stream(sni_dir: str | os.PathLike, task_names: Sequence[str],
                cfg: SniConfig = SniConfig(), split: str = "validation",
                vocab_path: str | None = None, fit: bool = True,
                allow_missing: bool = False,
                max_examples_per_task: int | None = None) -> "EvalExamples":
  """Evaluation examples as plain records, for a decode-and-score loop.

  The prompts are those of the seqio tasks registered with the same `cfg`
  and `vocab_path` (fitted to `cfg.max_input_tokens`); `fit=False` gives the
  unfitted `format_prompt` strings without token ids. The tasks are selected
  now (a missing file raises here); the instances are read when iterated.

  Args:
    sni_dir: root of the SNI copy.
    task_names: SNI task names or ids (not seqio names).
    cfg, vocab_path: as in `register_sni`.
    split: "validation" (seen tasks, the paper) or "test".
    fit: fit prompts to the token budget with the vocabulary.
    allow_missing: skip (and log) missing task files.
    max_examples_per_task: at most this many instances of each task
      (`splits.cap_instances`: seeded by `cfg.seed`, independent of the file
      order); None: all.

  Returns:
    An `EvalExamples`: each iteration reads the `PreparedExample`s (task, id,
    prompt, input_ids, target, references, category) again, task by task in
    file order.
  """
  if max_examples_per_task is not None and (
      not isinstance(max_examples_per_task, int) or max_examples_per_task < 1):
    raise ValueError("max_examples_per_task must be None or a positive int, got "
                     f"{max_examples_per_task!r}")
  sel = sni.select_tasks(sni_dir, None, task_names, False, allow_missing)
  return EvalExamples(os.fspath(sni_dir), tuple(sel.names), cfg, split,
                      (vocab_path or vocab_lib.default_path(1024)) if fit else None,
                      max_examples_per_task)


@dataclasses.dataclass(frozen=True)
class EvalExamples:
  """A re-iterable stream of evaluation examples (see `eval_stream`).

  Iterating parses one task file at a time and tokenizes one prompt at a
  time, so a pass over 756 tasks holds one task in memory, not the split;
  every pass yields the same examples in the same order.
  """
  sni_dir: str
  tasks: tuple[str, ...]
  cfg: SniConfig
  split: str
  vocab_path: str | None  # None: unfitted prompts
  max_examples_per_task: int | None = None

  def __iter__(self):
    vocabulary = vocab_lib.get_vocabulary(self.vocab_path) if self.vocab_path else None
    for t in self.tasks:
      task = records.read_task(sni.task_path(self.sni_dir, t), self.cfg.on_error)
      yield from prepare.iter_examples(task, self.cfg, self.split, vocabulary,
                                       max_examples=self.max_examples_per_task)
