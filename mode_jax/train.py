"""Fine-tune adapters on a SeqIO mixture: `python -m mode_jax.train --gin_file=...`.

Reads top to bottom: data, mesh, model, optimizer, resume, loop, final save.
The base stays frozen: only adapter variables get gradients and optimizer
state, and only they (with the optimizer state, step, data position and gin
config) go into run checkpoints.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, NamedTuple, Sequence

import gin
import jax
import jax.numpy as jnp

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import datasets
from mode_jax import evaluators as evaluators_lib
from mode_jax import experiment
from mode_jax import files
from mode_jax import launch
from mode_jax import metrics_log
from mode_jax import optim
from mode_jax import runlock
from mode_jax import sharding
from mode_jax import trainer


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm became NaN or infinite."""


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, model: Any = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          adapter: adapters_lib.AdapterConfig | None = None,
          base_checkpoint: str | None = None,
          dataset: Any = None, evaluators: Sequence[Any] | None = None,
          sni_dir: str | None = None, sni: Any = None, vocab_path: str | None = None,
          allow_missing: bool = False, cache_dir: str | None = None,
          optimizer: optim.OptimizerConfig = optim.OptimizerConfig(),
          mesh: sharding.MeshConfig = sharding.MeshConfig(),
          micro_batches: int = 1, pack: bool = False, prefix_lm: bool = False,
          seed: int = 0, log_every: int = 10, checkpoint_every: int = 1000,
          keep_checkpoints: int = 3, async_checkpoint: bool = True,
          eval_every: int = 0, eval_batch_size: int = 16, max_decode_len: int = 64,
          eval_tasks: Any = None, eval_max_examples_per_task: int | None = None,
          loss_chunk: int = 256, restore_step: int | None = None,
          data_shards: int | None = None, data_iterator_checkpoints: bool = True) -> dict:
  """Trains and returns a summary (final metrics, steps/s, checkpoint path).

  Args:
    model_dir: run directory (MODEL_DIR): checkpoints, logs, operative config.
    model: ModelConfig or config name (MODEL).
    mixture_or_task_name: seqio mixture or task (MIXTURE_OR_TASK_NAME).
    task_feature_lengths: {"inputs": N, "targets": M} (TASK_FEATURE_LENGTHS).
    train_steps: total optimizer steps (TRAIN_STEPS), including resumed ones.
    batch_size: global batch (BATCH_SIZE), split over processes.
    adapter: AdapterConfig (ADAPTER); None trains nothing but is allowed for
      evaluation-only runs.
    base_checkpoint: base weights (BASE_CHECKPOINT); None only for tiny configs.
    dataset: a `datasets.Dataset` (e.g. `@datasets.SniDataset()`); None:
      `datasets.SniDataset` of sni_dir, sni, vocab_path, allow_missing,
      cache_dir below.
    evaluators: evaluator configs run every `eval_every` steps (e.g.
      `[@evaluators.DecodeEvaluation(), @evaluators.ValidationLoss()]`);
      None: one `evaluators.DecodeEvaluation` of eval_tasks,
      eval_max_examples_per_task, max_decode_len and eval_batch_size below.
    sni_dir: SNI root (SNI_DIR) of the default dataset; registers the SNI
      tasks when given.
    sni: data.SniConfig for prompts and splits (default dataset).
    micro_batches: gradient accumulation steps within one optimizer step.
    eval_every: run the evaluators every N steps and at the end (0: off).
    eval_max_examples_per_task: the default evaluator decodes at most this
      many instances of each task, the same ones at every evaluation
      (`DecodeEvaluation.max_examples_per_task`; the official SNI
      evaluation: 100); None: all. `mode_jax.eval` stays uncapped unless
      `evaluate.max_examples_per_task` is bound.
    loss_chunk: positions per chunk of the output layer and cross-entropy
      (losses.chunked_cross_entropy; 0: the whole [B, L, V] logits at once).
    restore_step: resume from this checkpoint step (`--restore_step`) instead of
      the latest complete one; newer steps are set aside (renamed).
    data_shards: seqio shards of each global batch (default: one per process,
      or per group of processes holding the same rows). A multiple of that
      number: each process then reads several, so one process with
      data_shards=N reads the global batches of N processes.
    data_iterator_checkpoints: save each process's tf.data iterator state
      (resume in constant time; the shuffle buffers make it large on the
      full data), else its position only (small; resuming re-reads the
      consumed batches).
  """
  launch.check_arguments(train, locals())  # Settings first, before any heavy work.
  launch.check_feature_lengths(task_feature_lengths)
  if train_steps < 1 or batch_size < 1 or micro_batches < 1 or batch_size % micro_batches:
    raise ValueError(f"need train_steps >= 1, batch_size >= 1 divisible by micro_batches; got "
                     f"{train_steps}, {batch_size}, {micro_batches}")
  if adapter is None:
    raise ValueError("ADAPTER is required for training (the base is frozen)")
  mesh_ = experiment.make_mesh(mesh)
  sharding.check_batch(batch_size, micro_batches, mesh_)
  if eval_every:
    sharding.check_decode_batch(eval_batch_size, mesh_, "train.eval_batch_size")
  files.check_writable_dir(model_dir, "MODEL_DIR")
  if dataset is None:
    dataset = datasets.SniDataset(sni_dir=sni_dir, sni=sni, vocab_path=vocab_path,
                                  allow_missing=allow_missing, cache_dir=cache_dir)
  dataset = datasets.check_dataset(dataset)
  dataset.prepare(mixture_or_task_name, task_feature_lengths)  # registered, with examples
  if evaluators is None:
    evaluators = [evaluators_lib.DecodeEvaluation(
        tasks=eval_tasks, max_decode_len=max_decode_len, batch_size=eval_batch_size,
        max_examples_per_task=eval_max_examples_per_task)]
  lock = runlock.acquire(model_dir)  # One writer per run directory (process 0 holds it).
  if jax.process_index() == 0 and isinstance(dataset, datasets.SniDataset):
    dataset.write_run_config(model_dir, task_feature_lengths)  # what `evaluate` rebuilds

  _check_vocab(dataset, experiment.model_config(model))
  # Which rows of each global batch this process feeds (multi-host: disjoint).
  shard_id, nshards = trainer.data_shard(mesh_, batch_size)
  data_shards = data_shards or nshards
  if data_shards % nshards or batch_size % data_shards:
    raise ValueError(f"train.data_shards={data_shards} must be a multiple of the {nshards} "
                     f"process shards and divide BATCH_SIZE={batch_size}")
  run = make_run(model, adapter, mesh_, optimizer=optimizer, train_steps=train_steps,
                 micro_batches=micro_batches, prefix_lm=prefix_lm, loss_chunk=loss_chunk,
                 model_=experiment.build_model(model, adapter, mesh_,
                                               base_checkpoint=base_checkpoint, seed=seed))
  graphdef, frozen, tx = run.graphdef, run.frozen, run.tx
  state = jax.jit(lambda p, a: trainer.init_state(p, a, tx))(run.params, run.adapter_state)

  data = dataset.batches(datasets.BatchSpec(
      mixture_or_task_name, dict(task_feature_lengths), batch_size // nshards,
      split="train", shuffle=True, seed=seed, shard_id=shard_id, num_shards=nshards,
      shards_per_host=data_shards // nshards, pack=pack,
      save_iterator=data_iterator_checkpoints))
  print(f"process {jax.process_index()} of {jax.process_count()}: data shard {shard_id} of "
        f"{nshards}, {batch_size // nshards} rows of each batch of {batch_size}", flush=True)
  ckpt = checkpoints.RunCheckpointer(model_dir, save_interval_steps=checkpoint_every,
                                     max_to_keep=keep_checkpoints, async_save=async_checkpoint)
  config_text = launch.write_operative_config(model_dir, "config_start.gin")
  start = 0
  if restore_step is not None or ckpt.latest_step() is not None:
    state, _, _ = ckpt.restore(checkpoints.abstract_like(state), data, restore_step,
                               set_aside_newer=True)  # data: continued in place
    start = int(state["step"])
    print(f"resumed from {ckpt.directory} at step {start}", flush=True)

  step_fn = None
  log = metrics_log.MetricsLogger(model_dir, "train")
  evals = evaluators_lib.build_all(evaluators, evaluators_lib.EvalContext(
      dataset, graphdef, mesh_, dict(task_feature_lengths), mixture_or_task_name,
      prefix_lm=prefix_lm, loss_chunk=loss_chunk)) if eval_every else []
  eval_log = metrics_log.MetricsLogger(model_dir, "eval") if evals else None
  t_start, t_last, step = time.time(), time.time(), start
  steps_since, last = 0, {}
  tokens_since = jnp.zeros((), jnp.float32)
  # Finiteness is checked one step late, so the host never waits on the step
  # it just dispatched, except where it must: before logging, saving or
  # evaluating. A non-finite step is not applied (the state is unchanged),
  # so nothing saved before the check can hold its update.
  unchecked = []

  def check(keep_last: bool):
    while len(unchecked) > (1 if keep_last else 0):
      at, m = unchecked.pop(0)
      if not bool(m["finite"]):
        ckpt.close()
        lock.release()
        raise NonFiniteLossError(
            f"non-finite loss at step {at} (loss={float(m['loss'])}, grad_norm="
            f"{float(m['grad_norm'])}); the update was not applied and the last good "
            f"checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is intact")

  with sharding.use_mesh(mesh_):
    while step < train_steps:
      batch = trainer.place_batch(next(data), mesh_, num_shards=nshards)
      if step_fn is None:
        step_fn = run.jit(state, batch)
      state, metrics = step_fn(state, frozen, batch)
      step += 1
      unchecked.append((step, metrics))
      tokens_since = tokens_since + metrics["tokens"]
      steps_since += 1
      final = step == train_steps
      do_log = step % log_every == 0 or final
      do_eval = bool(evals) and (step % eval_every == 0 or final)
      check(keep_last=not (do_log or do_eval or final or ckpt.should_save(step)))
      if step == start + 1:
        config_text = launch.write_operative_config(model_dir)
      if do_log:
        now = time.time()
        sps = steps_since / max(now - t_last, 1e-9)
        last = {k: float(v) for k, v in metrics.items() if k not in ("routing", "finite")}
        last.update(steps_per_sec=sps,
                    tokens_per_sec=float(tokens_since) / max(now - t_last, 1e-9),
                    eta_sec=(train_steps - step) / max(sps, 1e-9))
        log.write(step, {**last, "routing": metrics["routing"]},
                  console_keys=["loss"] + (["aux_loss"] if adapter.aux_loss_weight else []) +
                  ["learning_rate", "grad_norm", "tokens_per_sec", "steps_per_sec", "eta_sec",
                   "routing/mean_entropy"])
        t_last, steps_since = now, 0
        tokens_since = jnp.zeros((), jnp.float32)
      lock.check()
      if ckpt.save(step, state, data, config_text, force=final):
        log.flush()  # a bucket's buffered log lines go out with each checkpoint
      if do_eval:
        for ev in evals:
          _evaluate(ev, state, frozen, model_dir, step, eval_log)
  ckpt.close()
  lock.release()
  log.close()
  if eval_log is not None:
    eval_log.close()
  summary = {"step": step, "final": last, "seconds": time.time() - t_start,
             "checkpoint_dir": ckpt.directory, "latest_checkpoint": ckpt.latest_step(),
             "params": adapters_lib.count_params(experiment.model_config(model), adapter)}
  if jax.process_index() == 0:
    files.write_json(files.join(model_dir, "train_summary.json"), summary)
  return summary


class Run(NamedTuple):
  """A training run's model split, optimizer and step: what train and aot share."""
  graphdef: Any
  params: Any
  adapter_state: Any
  frozen: Any
  tx: Any
  schedule: Any
  train_step: Any  # trainer.make_train_step's function, not yet jitted
  mesh: Any

  def jit(self, state, batch_shapes):
    """The step jitted with shardings by logical axes (state may be abstract)."""
    return trainer.jit_train_step(self.train_step, state, self.frozen, batch_shapes, self.mesh)


def make_run(model, adapter, mesh_, *, optimizer, train_steps, micro_batches, prefix_lm,
             loss_chunk, model_=None) -> Run:
  """The run of `train`'s arguments on `mesh_`; `model_` None: abstract shapes only."""
  if model_ is None:
    from mode_jax import models  # pylint: disable=g-import-not-at-top
    model_ = models.abstract_model(experiment.model_config(model), adapter)
  graphdef, params, astate, frozen = trainer.split_model(model_)
  tx, schedule = optim.make_optimizer(optimizer, train_steps)
  step = trainer.make_train_step(graphdef, tx, schedule, micro_batches=micro_batches,
                                 prefix_lm=prefix_lm, loss_chunk=loss_chunk)
  return Run(graphdef, params, astate, frozen, tx, schedule, step, mesh_)


def _check_vocab(dataset, cfg) -> None:
  """Token ids must index the model's embedding (jnp.take would clamp them)."""
  size = dataset.vocabulary().vocab_size
  if size > cfg.vocab_size:
    path = getattr(dataset, "vocab_path", None)
    raise ValueError(f"the vocabulary of {type(dataset).__name__}"
                     + (f" ({path!r})" if path else "") + f" has {size} pieces but MODEL "
                     f"{cfg.name!r} embeds only {cfg.vocab_size}")


def _evaluate(evaluator, state, frozen, model_dir, step, log):
  """Runs one evaluator; logs its scalars under validation/ and writes its JSON."""
  metrics, records = evaluator.evaluate((state["params"], state["adapter_state"], frozen))
  values, console = evaluator.scalars(metrics)
  log.write(step, {"validation": values}, console_keys=[f"validation/{k}" for k in console])
  name = "metrics" if evaluator.name == "decode" else f"validation_{evaluator.name}"
  if jax.process_index() == 0:
    files.write_json(files.join(model_dir, "eval", f"{name}_{step}.json"), metrics)
  return metrics, records


if __name__ == "__main__":
  launch.parse_and_run(train)
