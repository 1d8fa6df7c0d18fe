"""SentencePiece vocabularies: the run's model file, or the bundled tiny one.

Real runs pass Gemma's tokenizer (a `.model` file, local or gs://).
Tests and the tiny configs use a small SentencePiece model built
deterministically from the bundled SNI sample and shipped in `data/vocab/`:
`sni_sample_1024.model` (tiny_quickstart) and `sni_sample_512.model` (tiny).
Both follow Gemma's id layout: pad 0, eos 1, bos 2, unk 3; byte fallback, so
no text is unknown, and "\\n" is a piece of its own.

Rebuild (gives the same bytes; single thread, fixed seed):
    python -m mode_jax.data.build_vocab --out_dir data/vocab
"""

from __future__ import annotations

import io
import os

from mode_jax import files
from mode_jax.data import prompts
from mode_jax.data import records

REPO_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data")
SAMPLE_DIR = os.path.join(REPO_DATA, "sni_sample")
SIZES = (512, 1024)
SEED = 17


def default_path(vocab_size: int = 1024) -> str:
  """Path of the shipped tiny model of `vocab_size` (512 or 1024)."""
  if vocab_size not in SIZES:
    raise ValueError(f"vocab_size={vocab_size}; shipped sizes: {SIZES}")
  return os.path.join(REPO_DATA, "vocab", f"sni_sample_{vocab_size}.model")


def corpus_lines(sni_dir: str = SAMPLE_DIR) -> list[str]:
  """Training text: every task's prompt scaffold, queries and outputs, sorted by file."""
  lines = []
  for path in files.glob(files.join(sni_dir, "tasks"), "*.json"):
    task = records.read_task(path)
    lines += prompts.definition_str(task).split("\n")
    for i, ex in enumerate(task.positive_examples + task.negative_examples):
      lines += prompts.example_str("Positive", i + 1, ex, add_explanation=True).split("\n")
    for inst in task.instances:
      lines += prompts.query_str(inst).split("\n")
      lines += [o for out in inst.outputs for o in out.split("\n")]
  return [line for line in lines if line.strip()]


def build(vocab_size: int = 1024, sni_dir: str = SAMPLE_DIR) -> bytes:
  """Trains the tiny unigram model deterministically; returns its bytes.

  Args:
    vocab_size: total pieces, specials and 256 byte pieces included; must
      suit the corpus (SentencePiece fails with "Vocabulary size too high" on
      a corpus too small for it).
    sni_dir: the SNI copy whose task files give the text.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  spm.set_random_generator_seed(SEED)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus_lines(sni_dir)), model_writer=model,
      vocab_size=vocab_size, model_type="unigram", num_threads=1,
      shuffle_input_sentence=False, input_sentence_size=0, character_coverage=1.0,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True, split_digits=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      user_defined_symbols=["\n"], minloglevel=2)
  return model.getvalue()


def get_vocabulary(path: str | None = None, vocab_size: int = 1024):
  """A `seqio.SentencePieceVocabulary` from a `.model` file, local or in a bucket.

  seqio opens the file through `tf.io.gfile`, lazily and again in every
  process that unpickles the vocabulary; a bucket file is therefore copied
  once to a local cache file named by its content hash
  (`files.local_copy`) and seqio is given that path. The copy is read once
  per host (Gemma's model is 4 MB), reaches any GCS endpoint the path layer
  reaches (tf.io.gfile does not honour STORAGE_EMULATOR_HOST), and a changed
  object gets a new file.

  Args:
    path: the model file (Gemma's tokenizer for real runs); None: the shipped
      tiny model of `vocab_size`.
    vocab_size: 512 or 1024, used only when `path` is None.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  path = os.fspath(path or default_path(vocab_size))
  if not files.isfile(path):
    raise FileNotFoundError(f"SentencePiece model not found: {path}")
  return seqio.SentencePieceVocabulary(files.local_copy(path, suffix=".model"))
