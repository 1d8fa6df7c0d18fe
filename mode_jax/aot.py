"""Compile a run for a TPU topology on any machine: does it fit, and what does it cost?

    python -m mode_jax.aot --gin_file=experiments/main_mode16x4.gin --topology=v5e-32

Parses the same gin files as `mode_jax.train`, builds the run with the same
function (`train.make_run`: mesh rules, model split, optimizer, step) from
abstract shapes only (no weights, no data), and compiles the train step and
the evaluation (greedy decoding) step with the TPU compiler of the `libtpu`
package (`pip install -e .[tpu]`) for the named topology, as MaxText's
`train_compile.py` does. Prints per chip the HBM needed (arguments,
temporaries, outputs) against the HBM available, the compiler's FLOPs and
bytes, a model-FLOPs estimate and the compile time; exits 1 when a step does
not fit (or leaves less than `--headroom` of the HBM free), 2 on bad input.

XLA:CPU's memory analysis of the same program is no guide to a TPU's needs;
only the TPU compiler's is used here.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import sys
import time
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads (gin configs)

import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from mode_jax import adapters as adapters_lib
from mode_jax import decoding
from mode_jax import evaluators
from mode_jax import experiment
from mode_jax import launch
from mode_jax import sharding
from mode_jax import train as train_lib
from mode_jax import trainer

GIB = 1024 ** 3
PLACEHOLDERS = ("MODEL_DIR = '/tmp/mode_jax_aot'", "SNI_DIR = None")


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation: `get_topology_desc` arguments and HBM per chip.

  `hbm_bytes` is what the compiler lets a program use, a little less than
  the nominal capacity: its out-of-memory message names it ("exceeds
  available HBM (15.75G)" on v5e; tests/test_paper_scale.py checks each).
  """
  prefix: str  # topology_name prefix of get_topology_desc
  chip_config: str  # "megacore" (v4, v5p: two cores per chip) or "default"
  cores_per_chip: int  # the "-N" of a slice name counts cores on v4 / v5p
  hbm_bytes: int
  shapes: dict  # chips -> topology shape


_V4_SHAPES = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8"}
_2D_SHAPES = {16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
CHIPS = {
    "v4": Chip("v4", "megacore", 2, int(30.75 * GIB), _V4_SHAPES),
    "v5p": Chip("v5", "megacore", 2, int(95.74 * GIB), _V4_SHAPES),
    "v5e": Chip("v5e", "default", 1, int(15.75 * GIB), _2D_SHAPES),
    "v6e": Chip("v6e", "default", 1, int(31.25 * GIB), _2D_SHAPES),
}


def topology_names() -> list[str]:
  return [f"{k}-{n * c.cores_per_chip}" for k, c in CHIPS.items() for n in c.shapes]


def parse_topology(name: str) -> tuple[Chip, int]:
  """("v5e-32") -> (its Chip, number of chips); names as MaxText's compile_topology."""
  kind, _, count = name.partition("-")
  chip = CHIPS.get(kind)
  if chip is None or not count.isdigit() or int(count) % chip.cores_per_chip or (
      int(count) // chip.cores_per_chip not in chip.shapes):
    raise ValueError(f"unknown --topology {name!r}; known: {', '.join(topology_names())}")
  return chip, int(count) // chip.cores_per_chip


def topology_devices(name: str, num_slices: int = 1) -> list:
  """The TPU devices of `num_slices` slices of topology `name` (no TPU needed)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  chip, n = parse_topology(name)
  try:
    topo = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{chip.prefix}:{chip.shapes[n]}",
        chip_config_name=chip.chip_config, chips_per_host_bounds=(2, 2, 1),
        num_slices=num_slices)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(f"cannot describe TPU topology {name!r} ({e}); the TPU compiler comes "
                       "with the libtpu package: pip install -e .[tpu]") from e
  return sorted(topo.devices, key=lambda d: (getattr(d, "slice_index", 0), d.id))


# --- the run, as mode_jax.train builds it -----------------------------------

_TRAIN_ARGS = ("model", "adapter", "task_feature_lengths", "train_steps", "batch_size",
               "optimizer", "mesh", "micro_batches", "pack", "prefix_lm", "loss_chunk",
               "eval_every", "eval_batch_size", "max_decode_len")


def _bound(fn, name: str, defaults: dict) -> Any:
  try:
    return launch.query(f"{fn}.{name}")
  except ValueError:
    if name not in defaults or defaults[name] is gin.REQUIRED:
      raise SystemExit(f"aot: {fn}.{name} is not set by the gin files or bindings") from None
    return defaults[name]


def train_arguments() -> dict:
  """`train`'s arguments as the parsed gin config gives them (defaults filled in)."""
  sig = inspect.signature(train_lib.train)
  defaults = {k: p.default for k, p in sig.parameters.items()}
  return {k: _bound("train", k, defaults) for k in _TRAIN_ARGS}


def eval_settings(args: dict) -> list[tuple[str, int, int]]:
  """(name, batch, decode length) of the decoding steps the gin config runs."""
  out = []
  if args["eval_every"]:
    try:  # evaluators bound in gin (train.evaluators), else the default decoding
      bound = launch.query("train.evaluators")
    except ValueError:
      bound = None
    if bound is None:
      out.append(("train eval", args["eval_batch_size"], args["max_decode_len"]))
    else:
      out += [("train eval", e.batch_size, e.max_decode_len) for e in bound
              if isinstance(e, evaluators.DecodeEvaluation)]
  try:
    launch.query("evaluate.model")
  except ValueError:
    return out
  defaults = {k: p.default for k, p in inspect.signature(
      sys.modules["mode_jax.eval"].evaluate).parameters.items()}
  setting = ("eval", _bound("evaluate", "batch_size", defaults),
             _bound("evaluate", "max_decode_len", defaults))
  if not any(s[1:] == setting[1:] for s in out):
    out.append(setting)
  return out


def batch_shapes(batch_size: int, lengths: dict, pack: bool) -> dict:
  """The feature converter's batch (trainer.place_batch's dtypes)."""
  length = lengths["inputs"] + lengths["targets"]
  keys = trainer.BATCH_KEYS + ("decoder_causal_attention",)
  keys += ("decoder_positions", "decoder_segment_ids") if pack else ()
  return {k: jax.ShapeDtypeStruct((batch_size, length),
                                  jnp.float32 if k == "decoder_loss_weights" else jnp.int32)
          for k in keys}


# --- compiling and reporting -------------------------------------------------

@dataclasses.dataclass
class Report:
  """One compiled step on one chip."""
  name: str
  fits: bool
  hbm_bytes: int
  arguments: int = 0
  temporaries: int = 0
  outputs: int = 0
  aliased: int = 0
  code: int = 0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  model_flops: float = 0.0
  compile_seconds: float = 0.0
  error: str = ""

  @property
  def needed(self) -> int:
    return self.arguments + self.temporaries + self.outputs - self.aliased + self.code

  def lines(self) -> list[str]:
    if self.error:
      return [f"{self.name}: DOES NOT FIT ({self.error}) [compile {self.compile_seconds:.0f}s]"]
    free = 1 - self.needed / self.hbm_bytes
    return [
        f"{self.name}: {'fits' if self.fits else 'DOES NOT FIT'}: "
        f"{self.needed / GIB:.2f} GiB of {self.hbm_bytes / GIB:.2f} GiB HBM per chip "
        f"({100 * free:.0f}% free)",
        f"  arguments {self.arguments / GIB:.2f} GiB, temporaries "
        f"{self.temporaries / GIB:.2f} GiB, outputs {self.outputs / GIB:.2f} GiB "
        f"(donated {self.aliased / GIB:.2f} GiB), code {self.code / GIB:.3f} GiB",
        f"  per chip: {self.flops:.3e} FLOPs, {self.bytes_accessed:.3e} bytes accessed "
        f"(compiler; a loop body such as one micro-batch counts once); model FLOPs "
        f"estimate {self.model_flops:.3e} (the whole step)",
        f"  compile {self.compile_seconds:.0f}s"]


def _is_oom(e: Exception) -> bool:
  msg = str(e)
  return "RESOURCE_EXHAUSTED" in msg or "HbmOom" in msg or "Ran out of memory" in msg


def compile_report(name: str, jitted, args: Sequence, hbm_bytes: int, headroom: float,
                   model_flops: float, extra_bytes: int = 0) -> Report:
  """Lowers and compiles `jitted(*args)`; `extra_bytes` are held besides (per chip)."""
  t0 = time.time()
  try:
    compiled = jitted.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    if not _is_oom(e):
      raise
    first = next((l for l in str(e).splitlines() if l.strip()), str(e))
    return Report(name, False, hbm_bytes, compile_seconds=time.time() - t0, error=first[:300])
  seconds = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  r = Report(name, True, hbm_bytes, arguments=mem.argument_size_in_bytes + extra_bytes,
             temporaries=mem.temp_size_in_bytes, outputs=mem.output_size_in_bytes,
             aliased=mem.alias_size_in_bytes, code=mem.generated_code_size_in_bytes,
             flops=float(cost.get("flops", 0.0)),
             bytes_accessed=float(cost.get("bytes accessed", 0.0)),
             model_flops=model_flops, compile_seconds=seconds)
  r.fits = r.needed <= (1.0 - headroom) * hbm_bytes
  return r


def forward_flops_per_token(cfg, acfg, context: int) -> float:
  """Matmul FLOPs of one token's forward pass: base, tied logits, attention, adapters."""
  adapter = adapters_lib.count_params(cfg, acfg)["trainable"] if acfg is not None else 0
  base = cfg.non_embedding_params() + cfg.embedding_params()
  attention = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context
  return 2.0 * (base + adapter) + attention


def train_model_flops(cfg, acfg, batch: int, length: int) -> float:
  """Per step: forward + input gradients of the frozen base (2x forward), plus
  the adapters' weight gradients (their 2 FLOPs per parameter per token)."""
  adapter = adapters_lib.count_params(cfg, acfg)["trainable"]
  return batch * length * (2 * forward_flops_per_token(cfg, acfg, length) + 2.0 * adapter)


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _bytes_per_chip(tree, shardings) -> int:
  total = 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += x.dtype.itemsize * math.prod(s.shard_shape(x.shape))
  return total


def run_aot(topology: str, num_slices: int = 1, headroom: float = 0.0,
            decode: bool = True, log=print) -> list[Report]:
  """Compiles the parsed gin config's train (and decode) steps for `topology`."""
  args = train_arguments()
  chip, _ = parse_topology(topology)
  devices = topology_devices(topology, num_slices)
  mesh = args["mesh"].build(devices)
  sharding.check_batch(args["batch_size"], args["micro_batches"], mesh)
  cfg = experiment.model_config(args["model"])
  acfg = args["adapter"]
  if acfg is None:
    raise SystemExit("aot: train.adapter (ADAPTER) is required")
  log(f"{topology} x {num_slices} slice(s): {len(devices)} chips, mesh "
      f"{dict(mesh.shape)}; {cfg.name} (params {cfg.param_dtype}, activations {cfg.dtype}) "
      f"+ {acfg.kind}; batch {args['batch_size']} x "
      f"{sum(args['task_feature_lengths'].values())} in {args['micro_batches']} micro-batch(es)")
  run = train_lib.make_run(cfg, acfg, mesh, optimizer=args["optimizer"],
                           train_steps=args["train_steps"],
                           micro_batches=args["micro_batches"], prefix_lm=args["prefix_lm"],
                           loss_chunk=args["loss_chunk"])
  state = jax.eval_shape(lambda p, a: trainer.init_state(p, a, run.tx), run.params,
                         run.adapter_state)
  batch = batch_shapes(args["batch_size"], args["task_feature_lengths"], args["pack"])
  length = sum(args["task_feature_lengths"].values())
  reports = []
  with sharding.use_mesh(mesh):
    step = run.jit(state, batch)
    reports.append(compile_report(
        "train step", step, (state, run.frozen, batch), chip.hbm_bytes, headroom,
        train_model_flops(cfg, acfg, args["batch_size"], length) / len(devices)))
    for line in reports[-1].lines():
      log(line)
    if not decode:
      return reports
    train_args = reports[-1].arguments
    states = (run.params, run.adapter_state, run.frozen)
    state_sh = sharding.state_shardings(states, mesh)
    abstract_states = _abstract(states, state_sh)
    held = _bytes_per_chip(states, state_sh)
    for name, eval_batch, decode_len in eval_settings(args):
      field = "train.eval_batch_size" if name == "train eval" else "evaluate.batch_size"
      try:
        sharding.check_decode_batch(eval_batch, mesh, field)
      except ValueError as e:
        raise SystemExit(f"aot: {e}") from e
      prompt = args["task_feature_lengths"]["inputs"] + 1
      tok_sh = sharding.named_sharding(("batch", "length"), (eval_batch, prompt), mesh)
      tokens = jax.ShapeDtypeStruct((eval_batch, prompt), jnp.int32, sharding=tok_sh)
      mask = jax.ShapeDtypeStruct((eval_batch, prompt), jnp.bool_, sharding=tok_sh)
      fn = decoding.make_decode_fn(run.graphdef, decode_len, eos_id=1)
      fwd = forward_flops_per_token(cfg, acfg, prompt + decode_len)
      # Evaluating during training keeps the train state (optimizer slots
      # and the rest) in HBM beside the decoding step's own arguments.
      extra = max(train_args - held, 0) if name == "train eval" else 0
      reports.append(compile_report(
          f"{name} (decode {eval_batch} x {prompt}+{decode_len})",
          fn,
          (abstract_states, tokens, mask), chip.hbm_bytes, headroom,
          eval_batch * (prompt + decode_len) * fwd / len(devices), extra_bytes=extra))
      for line in reports[-1].lines():
        log(line)
  return reports


def quiet_libtpu() -> None:
  """libtpu looks for the TPU VM it runs on and prints warnings when there is
  none; a topology compile needs no VM, so give it placeholders. Its
  one-process lock file (/tmp/libtpu_lockfile) is not needed either: no
  TPU is opened, and compiles may run side by side."""
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--gin_file", action="append", default=[])
  ap.add_argument("--gin_bindings", action="append", default=[])
  ap.add_argument("--topology", required=True, help=f"one of {', '.join(topology_names())}")
  ap.add_argument("--num_slices", type=int, default=1)
  ap.add_argument("--headroom", type=float, default=0.0,
                  help="fail unless this fraction of HBM stays free (the configs use 0.1)")
  ap.add_argument("--no_decode", action="store_true", help="compile the train step only")
  a = ap.parse_args(sys.argv[1:] if argv is None else argv)
  if not a.gin_file:
    raise SystemExit("at least one --gin_file is required (see configs/)")
  try:
    parse_topology(a.topology)
  except ValueError as e:
    raise SystemExit(str(e)) from e
  quiet_libtpu()
  # The run directory and the data are never read: placeholders for the
  # macros the run files require (the user's bindings still come last).
  launch.parse_gin(a.gin_file, list(PLACEHOLDERS) + a.gin_bindings)
  reports = run_aot(a.topology, a.num_slices, a.headroom, decode=not a.no_decode)
  bad = [r.name for r in reports if not r.fits]
  if bad:
    print(f"aot: {', '.join(bad)} do(es) not fit on {a.topology} "
          f"(headroom {a.headroom:.0%})", flush=True)
    return 1
  print(f"aot: every step fits on {a.topology} (headroom {a.headroom:.0%})", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
