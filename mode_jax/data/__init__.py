"""Super-NaturalInstructions data: reader, prompts, SeqIO tasks, metrics.

Modules (import them whole, e.g. `from mode_jax.data import sni`):
  sni        read_task, list_tasks, select_tasks, format_prompt (no TensorFlow)
  records    typed task records and their validation (no TensorFlow)
  prompts    Tk-Instruct prompt format and token budget (no TensorFlow)
  splits     per-instance seeded train/validation/test split (no TensorFlow)
  config     SniConfig (split, prompt and budget options)
  metrics    official SNI ROUGE-L / exact match (no TensorFlow)
  vocab      SentencePiece vocabularies (tiny shipped models, Gemma's file)
  prepare    tokenized TFRecord cache of one task
  tasks      register_sni (seqio tasks and mixtures), eval_examples
  pipeline   BatchIterator: sharded, resumable numpy batches (tf.data, the default)
  arrayrecord      ArrayRecord copies of the prepared examples (random access)
  index_mixture    position -> (task, example): SeqIO rates, per-task epoch shuffles
  decoder_features seqio's decoder features and packing, in NumPy
  grain_packing    packed batches from windows of examples
  grain_pipeline   GrainBatchIterator: the Grain loader (SniDataset.loader='grain')

This package imports nothing itself, so `import mode_jax.data.sni` does not
load TensorFlow; `tasks`, `pipeline` and `prepare` (when writing) do.
"""
