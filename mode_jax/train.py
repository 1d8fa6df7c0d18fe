"""Fine-tune adapters on a SeqIO mixture: `python -m mode_jax.train --gin_file=...`.

Reads top to bottom: data, mesh, model, optimizer, resume, loop, final save.
The base stays frozen: only adapter variables get gradients and optimizer
state, and only they (with the optimizer state, step, data position and gin
config) go into run checkpoints.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, NamedTuple

import gin
import jax
import jax.numpy as jnp
import numpy as np

from mode_jax import adapters as adapters_lib
from mode_jax import checkpoints
from mode_jax import evaluation
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


@gin.configurable(denylist=["hooks"])
def train(*, model_dir: str = gin.REQUIRED, model: Any = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          adapter: adapters_lib.AdapterConfig | None = None,
          base_checkpoint: str | None = None,
          sni_dir: str | None = None, sni: Any = None, vocab_path: str | None = None,
          allow_missing: bool = False, cache_dir: str | None = None,
          optimizer: optim.OptimizerConfig = optim.OptimizerConfig(),
          mesh: sharding.MeshConfig = sharding.MeshConfig(),
          micro_batches: int = 1, pack: bool = False, prefix_lm: bool = False,
          seed: int = 0, log_every: int = 10, checkpoint_every: int = 1000,
          keep_checkpoints: int = 3, async_checkpoint: bool = True,
          eval_every: int = 0, eval_batch_size: int = 16, max_decode_len: int = 64,
          eval_tasks: Any = None, loss_chunk: int = 256, restore_step: int | None = None,
          data_shards: int | None = None, data_iterator_checkpoints: bool = True,
          hooks: Any = None) -> dict:
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
    sni_dir: SNI root (SNI_DIR); registers the SNI tasks when given.
    sni: data.SniConfig for prompts and splits.
    micro_batches: gradient accumulation steps within one optimizer step.
    eval_every: decode-and-score every N steps (0: off).
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
    hooks: test hooks, e.g. {"poison_step": k} makes step k's loss NaN.
  """
  launch.check_arguments(train, locals())  # Settings first, before any heavy work.
  launch.check_feature_lengths(task_feature_lengths)
  from mode_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mode_jax.data import tasks  # pylint: disable=g-import-not-at-top
  hooks = dict(hooks or {})
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
  registration = register_data(sni_dir, sni, vocab_path, allow_missing, cache_dir,
                                task_feature_lengths)
  tasks.require_examples(mixture_or_task_name)  # Registered, with examples, files valid.
  lock = runlock.acquire(model_dir)  # One writer per run directory (process 0 holds it).

  _check_vocab(vocab_path, experiment.model_config(model))
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

  data = pipeline.BatchIterator(
      mixture_or_task_name, task_feature_lengths, batch_size // nshards,
      split="train", shuffle=True, seed=seed, shard_id=shard_id, num_shards=nshards,
      pack=pack, shards_per_host=data_shards // nshards)
  data.save_iterator = data_iterator_checkpoints
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
  evaluator = _make_evaluator(registration, eval_every, eval_tasks, sni_dir, sni, vocab_path,
                              allow_missing, task_feature_lengths, max_decode_len,
                              eval_batch_size, graphdef, mesh_)
  eval_log = metrics_log.MetricsLogger(model_dir, "eval") if evaluator else None
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
      batch = next(data)
      if hooks.get("poison_step") == step + 1:  # test hook: a NaN loss at this step
        batch = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"] * np.nan)
      batch = trainer.place_batch(batch, mesh_, num_shards=nshards)
      if step_fn is None:
        step_fn = run.jit(state, batch)
      state, metrics = step_fn(state, frozen, batch)
      step += 1
      unchecked.append((step, metrics))
      tokens_since = tokens_since + metrics["tokens"]
      steps_since += 1
      final = step == train_steps
      do_log = step % log_every == 0 or final
      do_eval = evaluator is not None and (step % eval_every == 0 or final)
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
        _evaluate(evaluator, state, frozen, model_dir, step, eval_log)
  ckpt.close()
  lock.release()
  log.close()
  if evaluator is not None:
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


def register_data(sni_dir, sni, vocab_path, allow_missing, cache_dir, lengths):
  """Registers the SNI tasks and mixtures of SNI_DIR (None: nothing to register)."""
  if not sni_dir:
    return None
  from mode_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  from mode_jax.data import tasks  # pylint: disable=g-import-not-at-top
  if not files.isdir(sni_dir):
    raise FileNotFoundError(f"SNI_DIR {sni_dir!r} is not a directory")
  sni = sni or data_config.SniConfig(max_input_tokens=lengths["inputs"])
  return tasks.register_sni(sni_dir, sni, vocab_path=vocab_path, cache_dir=cache_dir,
                            allow_missing=allow_missing)


def _check_vocab(vocab_path, cfg) -> None:
  """Token ids must index the model's embedding (jnp.take would clamp them)."""
  from mode_jax.data import vocab  # pylint: disable=g-import-not-at-top
  size = vocab.get_vocabulary(vocab_path).vocab_size
  if size > cfg.vocab_size:
    raise ValueError(f"vocabulary {vocab_path or vocab.default_path(1024)!r} has {size} "
                     f"pieces but MODEL {cfg.name!r} embeds only {cfg.vocab_size}")


def _make_evaluator(registration, eval_every, eval_tasks, sni_dir, sni, vocab_path,
                    allow_missing, lengths, max_decode_len, batch_size, graphdef, mesh):
  if not eval_every or registration is None:
    return None
  from mode_jax.data import config as data_config  # pylint: disable=g-import-not-at-top
  from mode_jax.data import tasks  # pylint: disable=g-import-not-at-top
  from mode_jax.data import vocab  # pylint: disable=g-import-not-at-top
  sni = sni or data_config.SniConfig(max_input_tokens=lengths["inputs"])
  names = list(eval_tasks or registration.selected)
  examples = tasks.eval_examples(sni_dir, names, sni, vocab_path=vocab_path,
                                 allow_missing=allow_missing)
  return evaluation.Evaluator(examples, vocab.get_vocabulary(vocab_path), graphdef,
                              input_length=lengths["inputs"], max_decode_len=max_decode_len,
                              batch_size=batch_size, mesh=mesh)


def _evaluate(evaluator, state, frozen, model_dir, step, log):
  metrics, records = evaluator.evaluate((state["params"], state["adapter_state"], frozen))
  log.write(step, {"validation": {"rougeL": metrics["overall"]["rougeL"],
                            "exact_match": metrics["overall"]["exact_match"],
                            **{f"task/{t}/rougeL": m["rougeL"]
                               for t, m in metrics["per_task"].items()},
                            **{f"category/{c}/rougeL": m["rougeL"]
                               for c, m in metrics["per_category"].items()}}},
            console_keys=["validation/rougeL", "validation/exact_match"])
  if jax.process_index() == 0:
    files.write_json(files.join(model_dir, "eval", f"metrics_{step}.json"), metrics)
  return metrics, records


if __name__ == "__main__":
  launch.parse_and_run(train)
