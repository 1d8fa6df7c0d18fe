"""mode_jax against Hugging Face `peft` LoRA on `transformers`: train step and decoding.

One process, one Gemma architecture on both sides (Gemma 1, multi-query
attention, tied embedding, gated tanh-GELU MLP), and the same base weights:
the mode_jax model is built with `models.build_model`, and the HF model from
the config and tensors the library's own export writes for it
(`hf_export.hf_config`, `hf_export.merged_tensors`). Before any timing, the
script asserts equal base parameter counts, equal LoRA trainable counts,
and equal logits (within float tolerance) on a short batch.

Measured:
  1. Train step, s/step: mode_jax's jitted step (`trainer.make_train_step`,
     AdamW with global-norm clipping, full-batch cross-entropy) with LoRA R
     on q, k, v, o and with MoDE E x R (E experts, rank R, p = 1), against
     `peft.get_peft_model` LoRA R on q_proj, k_proj, v_proj, o_proj with
     `torch.optim.AdamW` and `clip_grad_norm_` (same learning rate, betas,
     eps, clip, weight decay 0), the same random token batch. After one
     warm-up step each (compilation), R rounds; each round times N steps of
     each contender back to back, the order rotating between rounds so that
     load from other processes hits all alike. Per-round ratios: mode_jax
     LoRA / PEFT and MoDE / mode_jax LoRA (of s/step; < 1 = faster).
  2. Decoding, tokens/s: cached greedy decoding of the LoRA model
     (`decoding.make_decode_fn`, no EOS stop) against PEFT's `generate`
     (`do_sample=False`, `use_cache=True`, no EOS stop), the same prompt
     batch and number of new tokens, one call each per round. Both adapters
     are at their init (lora_b = 0), so both sides compute the same function
     and the greedy tokens are compared (reported, not asserted: float noise
     may flip near-ties of a random model). Ratio mode_jax / HF of tokens/s
     (> 1 = mode_jax faster).

Threads: JAX's CPU client runs each XLA computation on one intra-op pool
sized to the schedulable cores (`os.sched_getaffinity`, so `--pin` gives
it one); torch gets the same count with `torch.set_num_threads`.

Run (from the repository root):
  python benchmarks/vs_peft.py                       # 8 x 512, vocab 8192, 5 rounds
  python benchmarks/vs_peft.py --pin 0 --json /tmp/vs_peft.json
  python benchmarks/vs_peft.py --quick               # smoke run, seconds
  python benchmarks/vs_peft.py --layers 18 --d-model 2048 --heads 8 --head-dim 256 \
      --mlp 16384 --vocab 256000                     # Gemma 2B shapes (needs ~40 GB)

Prints a markdown table (for the README) and, with --json, writes every
per-round number.

Expect: --quick takes about 50 s on 2 shared AMD EPYC cores (mostly
compilation) and checks that everything runs; its millisecond steps say
nothing about speed. The full size is not measured yet (its time: a few
minutes of compilation and about R * N * 3 steps). Measure on an idle
machine, or with --pin: with 2 threads per side on a loaded machine (or
under `nice`), torch's OpenMP barriers stall whenever one of its threads
is descheduled, and one --quick PEFT step varied from 0.01 to 1.3 s.

Not the same on the two sides (by design of each library, left as each user
would run it): mode_jax's step also checks finiteness and computes metrics;
HF attention is `--hf-attn` (default sdpa, torch's fastest on CPU); HF
generate grows a DynamicCache, mode_jax writes a preallocated cache and runs
one extra single-token step (it decodes the last token too); torch AdamW on
CPU runs its per-parameter loop, optax one fused update.

Legend: B batch, L length, P prompt length, T new tokens, V vocab.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

# Runnable as `python benchmarks/vs_peft.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUICK = dict(layers=2, d_model=128, heads=4, head_dim=32, mlp=512, vocab=1024, batch=2,
             seq=32, rounds=1, steps=2, decode_batch=2, prompt=16, new_tokens=8)
DTYPES = ("float32", "bfloat16")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--d-model", type=int, default=512)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--head-dim", type=int, default=64)
  p.add_argument("--kv-heads", type=int, default=1, help="1 = multi-query attention")
  p.add_argument("--mlp", type=int, default=2048)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--dtype", choices=DTYPES, default="float32",
                 help="base weights and activations (adapters stay float32 on both sides)")
  p.add_argument("--rank", type=int, default=64, help="LoRA rank")
  p.add_argument("--mode-experts", type=int, default=16)
  p.add_argument("--mode-rank", type=int, default=4)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3, help="train steps per contender per round")
  p.add_argument("--decode-batch", type=int, default=8)
  p.add_argument("--prompt", type=int, default=128)
  p.add_argument("--new-tokens", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--hf-attn", choices=("sdpa", "eager"), default="sdpa")
  p.add_argument("--settle", type=float, default=0.5,
                 help="untimed pause (s) before each timed block, so the other library's "
                      "idle worker threads have stopped spinning")
  p.add_argument("--pin", type=int, default=None, metavar="CORE",
                 help="pin the process to this core (before JAX and torch start threads)")
  p.add_argument("--quick", action="store_true",
                 help="smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
  p.add_argument("--skip-decode", action="store_true")
  p.add_argument("--json", default=None, metavar="PATH")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if args.quick:
    for k, v in QUICK.items():
      setattr(args, k, v)
  return args


ARGS = parse_args() if __name__ == "__main__" else None
# Pinning before jax and torch are imported: both size their thread pools
# from the affinity mask when they start.
if ARGS is not None and ARGS.pin is not None:
  os.sched_setaffinity(0, {ARGS.pin})
THREADS = len(os.sched_getaffinity(0))

import flax  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from mode_jax import adapters  # noqa: E402
from mode_jax import decoding  # noqa: E402
from mode_jax import hf_export  # noqa: E402
from mode_jax import models  # noqa: E402
from mode_jax import optim  # noqa: E402
from mode_jax import sharding  # noqa: E402
from mode_jax import trainer  # noqa: E402

torch.set_num_threads(THREADS)
HF_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
# Logit agreement of the two implementations on the same weights.
LOGIT_ATOL = {"float32": 1e-3, "bfloat16": 0.25}


def machine() -> dict:
  cpu = "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  return {"cpu": cpu, "cores_online": os.cpu_count(), "threads_used": THREADS,
          "pinned_core": ARGS.pin, "load_avg_1m": round(os.getloadavg()[0], 2),
          "python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "torch": torch.__version__,
          "transformers": transformers.__version__, "peft": peft.__version__,
          "torch_num_threads": torch.get_num_threads(),
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
          "jax_devices": [str(d) for d in jax.devices()]}


def model_config(a) -> models.ModelConfig:
  return models.get_config("tiny").replace(
      name="vs_peft", vocab_size=a.vocab, num_layers=a.layers, embed_dim=a.d_model,
      num_heads=a.heads, num_kv_heads=a.kv_heads, head_dim=a.head_dim, mlp_dim=a.mlp,
      dtype=a.dtype, param_dtype=a.dtype)


def hf_twin(model, cfg: models.ModelConfig, attn: str):
  """The HF Gemma of `cfg` holding `model`'s base weights (no adapters)."""
  hf_cfg = hf_export.hf_config(cfg, cfg.vocab_size)
  hf = transformers.GemmaForCausalLM(transformers.GemmaConfig(**hf_cfg, attn_implementation=attn))
  torch_dtype = getattr(torch, cfg.param_dtype)
  tensors = {k: torch.from_numpy(np.array(v, np.float32)).to(torch_dtype)
             for k, v in hf_export.merged_tensors(model, None, cfg.vocab_size)}
  missing, unexpected = hf.load_state_dict(tensors, strict=False)
  # lm_head is tied to the embedding in every Gemma: not a tensor of its own.
  assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
  hf.tie_weights()
  return hf.to(torch_dtype).eval()


def check_same_model(model, hf_base_count, peft_model, cfg, acfg) -> dict:
  """Asserts equal base counts, LoRA counts and logits; returns the counts.

  `hf_base_count` is counted before `get_peft_model`, which adds the LoRA
  modules to the HF model in place.
  """
  ours = models.param_counts(model)
  ours_base = ours["embedding"] + ours["non_embedding"]
  assert ours_base == hf_base_count, (ours_base, hf_base_count)
  hf_lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
  assert ours["adapter_trainable"] == hf_lora, (ours["adapter_trainable"], hf_lora)
  assert peft_model.peft_config["default"].lora_alpha / acfg.rank == acfg.scale
  toks = np.random.RandomState(1).randint(1, cfg.vocab_size, (2, 16)).astype(np.int32)
  graphdef, state = nnx.split(model)
  ours_logits = np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, toks))
  with torch.no_grad():
    hf_logits = peft_model(input_ids=torch.from_numpy(toks).long()).logits.float().numpy()
  diff = float(np.abs(ours_logits - hf_logits).max())
  assert diff < LOGIT_ATOL[cfg.dtype], f"logits differ by {diff}"
  return {"base_params": ours_base, "lora_trainable": hf_lora, "logit_max_abs_diff": diff}


def peft_lora(hf, acfg):
  lcfg = peft.LoraConfig(r=acfg.rank, lora_alpha=acfg.scale * acfg.rank, lora_dropout=0.0,
                         target_modules=[HF_TARGETS[t] for t in acfg.targets], bias="none",
                         task_type="CAUSAL_LM")
  return peft.get_peft_model(hf, lcfg)


def jax_trainer(cfg, acfg, ocfg, batch, seed):
  """(run(n) -> None, trainable count) of mode_jax's jitted train step."""
  model = models.build_model(cfg, acfg, seed=seed)
  count = models.param_counts(model)["adapter_trainable"]
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  tx, schedule = optim.make_optimizer(ocfg, total_steps=1000)
  graphdef, params, astate, frozen = trainer.split_model(model)
  state = trainer.init_state(params, astate, tx)
  placed = trainer.place_batch(batch, mesh)
  step = trainer.jit_train_step(trainer.make_train_step(graphdef, tx, schedule),
                                state, frozen, placed, mesh)
  box = {"state": state}

  def run(n):
    for _ in range(n):
      box["state"], metrics = step(box["state"], frozen, placed)
    jax.block_until_ready((box["state"], metrics))
    assert bool(metrics["finite"])

  return run, count


def torch_trainer(peft_model, ocfg, batch):
  """run(n) -> None: PEFT LoRA steps with torch AdamW on the same batch."""
  inp = torch.from_numpy(batch["decoder_input_tokens"]).long()
  tgt = torch.from_numpy(batch["decoder_target_tokens"]).long()
  params = [p for p in peft_model.parameters() if p.requires_grad]
  # optax.adamw's defaults (eps 1e-8, eps_root 0) with the library's settings.
  opt = torch.optim.AdamW(params, lr=ocfg.learning_rate, betas=(ocfg.b1, ocfg.b2), eps=1e-8,
                          weight_decay=ocfg.weight_decay)
  peft_model.train()

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      logits_blv = peft_model(input_ids=inp).logits
      loss = F.cross_entropy(logits_blv.float().flatten(0, 1), tgt.flatten())
      loss.backward()
      if ocfg.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, ocfg.clip_norm)
      opt.step()
    assert torch.isfinite(loss)

  return run


def timed_rounds(contenders: dict, rounds: int, reps: int,
                 settle: float) -> dict[str, list[float]]:
  """Seconds per call of each contender per round; the order rotates per round."""
  names = list(contenders)
  out = {n: [] for n in names}
  for r in range(rounds):
    for n in names[r % len(names):] + names[:r % len(names)]:
      # XLA's and torch's pools spin-wait a while after their work; right
      # after one library, the other measured up to 3x slower on 2 cores.
      time.sleep(settle)
      t0 = time.perf_counter()
      contenders[n](reps)
      out[n].append((time.perf_counter() - t0) / reps)
  return out


def decode_bench(model, peft_model, a) -> dict:
  """Tokens/s per round of cached greedy decoding on both sides, and agreement."""
  b, p, t = a.decode_batch, a.prompt, a.new_tokens
  toks_bp = np.random.RandomState(a.seed + 2).randint(1, a.vocab, (b, p)).astype(np.int32)
  graphdef, state = nnx.split(model)
  # eos_id -1 is no token: every call decodes all T tokens, as HF does below.
  fn = decoding.make_decode_fn(graphdef, t, eos_id=-1)
  mask_bp = np.ones((b, p), bool)
  gen_cfg = copy.deepcopy(peft_model.generation_config)
  gen_cfg.update(eos_token_id=None, do_sample=False, use_cache=True, max_new_tokens=t,
                 pad_token_id=0)
  inp = torch.from_numpy(toks_bp).long()
  peft_model.eval()
  got = {}

  def ours(_):
    got["ours"] = np.asarray(fn((state,), toks_bp, mask_bp))

  def theirs(_):
    with torch.inference_mode():
      out = peft_model.generate(input_ids=inp, attention_mask=torch.ones_like(inp),
                                generation_config=gen_cfg)
    got["hf"] = out[:, p:].numpy()

  for _ in range(2):  # warm-up: compilation, allocator
    ours(1)
    theirs(1)
  secs = timed_rounds({"mode_jax": ours, "HF generate": theirs}, a.rounds, 1, a.settle)
  assert got["hf"].shape == got["ours"].shape == (b, t), (got["hf"].shape, got["ours"].shape)
  tps = {k: [b * t / s for s in v] for k, v in secs.items()}
  ratio = [x / y for x, y in zip(tps["mode_jax"], tps["HF generate"])]
  return {"tokens_per_s": tps, "ratio_per_round": ratio,
          "tokens_equal_fraction": float((got["ours"] == got["hf"]).mean()),
          "rows_equal": int((got["ours"] == got["hf"]).all(1).sum())}


def med(xs) -> float:
  return statistics.median(xs)


def table(res: dict, a) -> str:
  """The README's markdown table."""
  tr, m = res["train"], res["machine"]
  lines = [
      f"Gemma 1 architecture, {a.layers} layers, d_model {a.d_model}, {a.heads} heads x "
      f"{a.head_dim}, {a.kv_heads} KV head(s), MLP {a.mlp}, vocab {a.vocab}, {a.dtype}; "
      f"AdamW; train batch {a.batch} x {a.seq}; {a.rounds} rounds x {a.steps} steps; "
      f"{m['cpu']}, {m['threads_used']} thread(s) on each side "
      f"(pinned: {m['pinned_core']}), load {m['load_avg_1m']}; jax {m['jax']}, "
      f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, "
      f"XLA_FLAGS={m['XLA_FLAGS'] or '(unset)'}.", "",
      "| train step | trainable params | s/step per round | median s/step |",
      "|---|---:|---|---:|"]
  for name, xs in tr["s_per_step"].items():
    lines.append(f"| {name} | {tr['trainable'][name]:,} | {', '.join(f'{x:.4f}' for x in xs)} "
                 f"| {med(xs):.4f} |")
  for name, xs in tr["ratios"].items():
    lines.append(f"| ratio {name} | | {', '.join(f'{x:.3f}' for x in xs)} | {med(xs):.3f} |")
  if "decode" in res:
    d = res["decode"]
    lines += ["", f"| greedy decode, batch {a.decode_batch}, prompt {a.prompt}, "
              f"{a.new_tokens} new tokens | tokens/s per round | median tokens/s |",
              "|---|---|---:|"]
    for name, xs in d["tokens_per_s"].items():
      lines.append(f"| {name} (LoRA {a.rank}) | {', '.join(f'{x:.1f}' for x in xs)} "
                   f"| {med(xs):.1f} |")
    lines.append(f"| ratio mode_jax / HF (tokens/s) | "
                 f"{', '.join(f'{x:.3f}' for x in d['ratio_per_round'])} "
                 f"| {med(d['ratio_per_round']):.3f} |")
    lines.append("")
    lines.append(f"Greedy tokens equal: {d['tokens_equal_fraction']:.1%} "
                 f"({d['rows_equal']} of {a.decode_batch} rows identical).")
  c = res["checks"]
  lines.append(f"Checked: base parameters {c['base_params']:,} on both sides, LoRA trainable "
               f"{c['lora_trainable']:,} on both, max |logit difference| "
               f"{c['logit_max_abs_diff']:.2e}.")
  return "\n".join(lines)


def main(a) -> dict:
  cfg = model_config(a)
  lora = adapters.AdapterConfig(kind="lora", rank=a.rank, targets=tuple(HF_TARGETS))
  mode = adapters.AdapterConfig(kind="mode", rank=a.mode_rank, num_experts=a.mode_experts,
                                expert_rank=1, targets=tuple(HF_TARGETS))
  ocfg = optim.OptimizerConfig(name="adamw", learning_rate=a.lr)
  res = {"args": vars(a), "machine": machine()}
  print(f"# {json.dumps(res['machine'])}", file=sys.stderr)

  model = models.build_model(cfg, lora, seed=a.seed)
  hf = hf_twin(model, cfg, a.hf_attn)
  base_count = sum(p.numel() for p in hf.parameters())  # the tied weight counted once
  peft_model = peft_lora(hf, lora)
  res["checks"] = check_same_model(model, base_count, peft_model, cfg, lora)
  if not a.skip_decode:
    # Before training, while both adapters are at init (the same function).
    res["decode"] = decode_bench(model, peft_model, a)

  rng = np.random.RandomState(a.seed + 1)
  toks = rng.randint(1, a.vocab, (a.batch, a.seq + 1)).astype(np.int32)
  batch = {"decoder_input_tokens": toks[:, :-1], "decoder_target_tokens": toks[:, 1:],
           "decoder_loss_weights": np.ones((a.batch, a.seq), np.float32)}
  lora_name, mode_name, peft_name = (f"mode_jax LoRA {a.rank}",
                                     f"mode_jax MoDE {a.mode_experts}x{a.mode_rank}",
                                     f"PEFT LoRA {a.rank}")
  run_lora, n_lora = jax_trainer(cfg, lora, ocfg, batch, a.seed)
  run_mode, n_mode = jax_trainer(cfg, mode, ocfg, batch, a.seed)
  n_peft = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
  contenders = {lora_name: run_lora, mode_name: run_mode,
                peft_name: torch_trainer(peft_model, ocfg, batch)}
  for run in contenders.values():
    # Two warm-up steps: mode_jax's step compiles twice (the first call's
    # fresh state and the step's own output differ in weak types), torch
    # allocates its optimizer slots in the first.
    run(2)
  secs = timed_rounds(contenders, a.rounds, a.steps, a.settle)
  res["train"] = {
      "trainable": {lora_name: n_lora, mode_name: n_mode, peft_name: n_peft},
      "s_per_step": secs,
      "ratios": {
          f"{lora_name} / {peft_name} (s/step)":
              [x / y for x, y in zip(secs[lora_name], secs[peft_name])],
          f"{mode_name} / {lora_name} (s/step)":
              [x / y for x, y in zip(secs[mode_name], secs[lora_name])],
          f"{mode_name} / {peft_name} (s/step)":
              [x / y for x, y in zip(secs[mode_name], secs[peft_name])]}}
  print(table(res, a))
  if a.json:
    with open(a.json, "w") as f:  # a local file the caller names, not a run path
      json.dump(res, f, indent=2)
  return res


if __name__ == "__main__":
  main(ARGS)
