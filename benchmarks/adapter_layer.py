"""Adapter-layer benchmark: jitted forward+backward of one adapted matrix.

Times, for one adapted P x Q matrix and T tokens, the jitted forward and
backward pass (gradients w.r.t. the adapter parameters and the input x of
sum(dy * cotangent)) of LoRA 64, MoLoRA 16x4, MoLoRA-SD 16x4, MoDE 16x4
(E=16, R=4, p=1), a naive MoDE that materialises the per-token mixed
up-projection b~[t, j, :] = sum_e w[t, j, e] lora_b[e, j, :] (a [T, R, Q]
tensor), and MoDE's u contracted with lora_b by an einsum over two
contracting dimensions (the formulation mode.py used before; see there).
The rank-wise top-k kinds: FlyLoRA 32/k8, SMoRA 64/k8 (published R and k),
MoDE 16x4 top-2 as the library runs it (dense u @ lora_b with zeros off the
top-2 experts of each group), and a sparse MoDE top-2 that gathers only the
selected rows of lora_b per token (a [T, k*R, Q] tensor; skipped where that
tensor would exceed --gather-gib), to see whether top-k saves time on CPU.
Shapes: P = Q = 2048 (attention q/o of Gemma 2B) and P = 2048, Q = 16384
(its MLP gate/up). Methods are timed in interleaved rounds, so the load of
other processes on a shared machine hits them alike.

Run (from the repository root):
  python benchmarks/adapter_layer.py                 # T=4096, 10 rounds
  python benchmarks/adapter_layer.py --quick         # T=512, 3 rounds
  python benchmarks/adapter_layer.py --tokens 8192 --repeats 20
  python benchmarks/adapter_layer.py --repeats 5 --methods "LoRA 64,MoDE 16x4,MoDE 16x4 top-2"

Expect (CPU, float32): MoDE 16x4 within 1.3x of LoRA 64 (same up-projection
width E*R = 64 = R_lora; the extra work is the router, G*P*E per token, and
the gate product); the naive MoDE 5-25x slower. Measured on 2 shared AMD
EPYC cores (load average ~5), T = 4096, about 2 minutes in all: MoDE 16x4 /
LoRA 64 = 1.10 at 2048x2048 and 1.15 at 2048x16384; naive 6.8 and 23.6;
2-dim einsum 1.8 and 3.4.

Top-k (`--repeats 5`, T = 4096, same 2 shared cores, load average ~4,
about 4 minutes for the whole table), ratios to LoRA 64 at 2048x2048 /
2048x16384: MoDE 16x4 1.16 / 1.10; MoDE 16x4 top-2 (library: dense u @
lora_b with zeros off the top-2) 1.21 / 1.07, the same time as dense MoDE
within noise; the gather top-2 3.05 / skipped (2 GiB tensor), and at
T = 1024 3.0x / 7.5x slower than the masked top-2. Top-k saves no time on
CPU at these sizes (E*R = 64 columns are one cheap matmul; the gather is
memory-bound), so the library keeps the dense masked form. FlyLoRA 32/k8
0.82 / 0.58 (rank 32, no router); SMoRA 64/k8 1.35 / 1.14 (rank 64 plus a
[P, 64] router).

Analytic forward FLOPs (multiply-add = 2 FLOPs; softmax, entropy and casts
left out; the backward is about twice the forward):
  LoRA R:            2T(P R + R Q)
  MoLoRA E x R:      2T(E P R + P E + E R Q) + T E R      (gate product)
  MoLoRA-SD E x R:   2T(P R + P E + E R Q) + T E R        (gate product)
  MoDE E x R x p:    2T(P R + G P E + E R Q) + T R E      (u = h * w; also
                                                           the 2-dim einsum)
  naive MoDE:        2T(P R + G P E) + 2T R E Q + 2T R Q  (b~, then h . b~)
  MoDE top-k:        as MoDE (the dense contraction runs on zeros too)
  MoDE top-k gather: 2T(P R + G P E) + 2T k R Q           (selected rows only)
  FlyLoRA R / k:     2T(P R + R Q)                        (dense, masked h)
  SMoRA R / k:       2T(2 P R + R Q)                      (lora_a and router)
with G = R / p routed groups and k kept experts (MoDE) or ranks.

Legend: T tokens, P (D) input features, Q (F) output features, R rank,
E experts, G groups, p expert rank.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# Runnable as `python benchmarks/adapter_layer.py` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from mode_jax import adapters  # noqa: E402

SHAPES = ((2048, 2048), (2048, 16384))

# name: (kind, R, E, p, top_k); "mode_naive" and co. reuse MoDE's parameters.
METHODS = {
    "LoRA 64": ("lora", 64, 1, 1, None),
    "MoLoRA 16x4": ("molora", 4, 16, 1, None),
    "MoLoRA-SD 16x4": ("molora_sd", 4, 16, 1, None),
    "MoDE 16x4": ("mode", 4, 16, 1, None),
    "MoDE 16x4 naive": ("mode_naive", 4, 16, 1, None),
    # The same u as MoDE contracted with lora_b [E,R,Q] by an einsum over two
    # contracting dims (mode.py before it flattened (e, j) into one matmul).
    "MoDE 16x4 2-dim einsum": ("mode_einsum2", 4, 16, 1, None),
    "MoDE 16x4 top-2": ("mode", 4, 16, 1, 2),
    # Top-2 that computes only the selected experts' rows (not in the library).
    "MoDE 16x4 top-2 gather": ("mode_gather", 4, 16, 1, 2),
    "FlyLoRA 32/k8": ("flylora", 32, 1, 1, 8),
    "SMoRA 64/k8": ("smora", 64, 1, 1, 8),
}


def forward_flops(kind: str, t: int, p_in: int, q_out: int, r: int, e: int, p: int,
                  k: int | None = None) -> int:
  """Analytic forward FLOPs of one adapted matrix (see the module docstring)."""
  g = r // p
  if kind == "mode_gather":
    return 2 * t * (p_in * r + g * p_in * e) + 2 * t * k * r * q_out
  if kind == "flylora":
    return 2 * t * (p_in * r + r * q_out)
  if kind == "smora":
    return 2 * t * (2 * p_in * r + r * q_out)
  if kind == "lora":
    return 2 * t * (p_in * r + r * q_out)
  if kind == "molora":
    return 2 * t * (e * p_in * r + p_in * e + e * r * q_out) + t * e * r
  if kind == "molora_sd":
    return 2 * t * (p_in * r + p_in * e + e * r * q_out) + t * e * r
  if kind in ("mode", "mode_einsum2"):
    return 2 * t * (p_in * r + g * p_in * e + e * r * q_out) + t * r * e
  if kind == "mode_naive":
    return 2 * t * (p_in * r + g * p_in * e) + 2 * t * r * e * q_out + 2 * t * r * q_out
  raise ValueError(kind)


def _mode_inputs(params, x_td: jax.Array):
  """lora_a [D,R] and lora_b [E,R,F] in x's dtype, float32 router logits [T,G,E]."""
  a_dr = params["lora_a"][...].astype(x_td.dtype)
  b_erf = params["lora_b"][...].astype(x_td.dtype)
  logits_tge = jnp.einsum("td,dge->tge", x_td.astype(jnp.float32),
                          params["router"][...].astype(jnp.float32))
  return a_dr, b_erf, logits_tge


def naive_mode(params, x_td: jax.Array, p: int, scale: float) -> jax.Array:
  """MoDE that builds b~[t, j, :] = sum_e w[t, g(j), e] lora_b[e, j, :] ([T, R, Q])."""
  a_dr, b_erf, logits_tge = _mode_inputs(params, x_td)
  w_tge = jax.nn.softmax(logits_tge, axis=-1)
  w_tre = jnp.repeat(w_tge, p, axis=-2).astype(x_td.dtype)  # column j -> group j // p
  bt_trf = jnp.einsum("tre,erf->trf", w_tre, b_erf)
  h_tr = x_td @ a_dr
  return (scale * jnp.einsum("tr,trf->tf", h_tr, bt_trf)).astype(x_td.dtype)


def einsum2_mode(params, x_td: jax.Array, p: int, scale: float) -> jax.Array:
  """MoDE as einsum('tre,erf->tf', u, lora_b): two contracting dims, no [T, R, Q]."""
  a_dr, b_erf, logits_tge = _mode_inputs(params, x_td)
  w_tge = jax.nn.softmax(logits_tge, axis=-1)
  h_tr = x_td @ a_dr
  t, (g, e) = h_tr.shape[0], w_tge.shape[-2:]
  h_tgp = h_tr.astype(jnp.float32).reshape(t, g, p)
  u_tre = (h_tgp[:, :, :, None] * w_tge[:, :, None, :]).reshape(t, g * p, e)
  return (scale * jnp.einsum("tre,erf->tf", u_tre.astype(x_td.dtype), b_erf)).astype(x_td.dtype)


def gather_mode(params, x_td: jax.Array, p: int, k: int, scale: float) -> jax.Array:
  """Top-k MoDE on the selected experts only: dy = sum_{g, slot, i} u * lora_b[e_sel, j, :].

  Gathers lora_b[idx[t, g, slot], g*p + i, :] for every token: a [T, G, k, p,
  Q] tensor, k*R rows of Q per token instead of the dense E*R-wide matmul.
  """
  a_dr, b_erf, logits_tge = _mode_inputs(params, x_td)
  e, r, f = b_erf.shape
  g = r // p
  top_tgk, idx_tgk = jax.lax.top_k(logits_tge, k)
  w_tgk = jax.nn.softmax(top_tgk, axis=-1)
  h_tgp = (x_td @ a_dr).astype(jnp.float32).reshape(-1, g, p)
  b_gepf = jnp.swapaxes(b_erf.reshape(e, g, p, f), 0, 1)
  sel_tgkpf = b_gepf[jnp.arange(g)[None, :, None], idx_tgk]
  u_tgkp = (w_tgk[..., None] * h_tgp[:, :, None, :]).astype(x_td.dtype)
  dy_tf = jnp.einsum("tgkp,tgkpf->tf", u_tgkp, sel_tgkpf)
  return (scale * dy_tf).astype(x_td.dtype)


def build_step(kind: str, r: int, e: int, p: int, p_in: int, q_out: int, k: int | None = None):
  """(jitted fwd+bwd, params): grads of sum(dy * ct) w.r.t. (params, x)."""
  cfg = adapters.AdapterConfig(kind="mode" if kind.startswith("mode") else kind, rank=r,
                               num_experts=e, expert_rank=p, top_k=k, b_init_scale=0.02)
  module = adapters.make_adapter(cfg, p_in, q_out, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(module, adapters.AdapterParam, ...)

  def loss(params, x_td, ct_tf):
    if kind == "mode_naive":
      dy_tf = naive_mode(params, x_td, p, cfg.scale)
    elif kind == "mode_einsum2":
      dy_tf = einsum2_mode(params, x_td, p, cfg.scale)
    elif kind == "mode_gather":
      dy_tf = gather_mode(params, x_td, p, k, cfg.scale)
    else:
      dy_tf = nnx.merge(graphdef, params, rest)(x_td)
    return jnp.sum(dy_tf * ct_tf)

  return jax.jit(jax.grad(loss, argnums=(0, 1))), params


def time_steps(steps: dict, args_by_name: dict, warmup: int, repeats: int) -> dict:
  """Median wall time in ms of each step, after `warmup` calls.

  The steps are timed in interleaved rounds (one call of each per round), so
  that load from other processes on a shared machine hits all of them alike.
  """
  for name, step in steps.items():
    for _ in range(warmup):
      jax.block_until_ready(step(*args_by_name[name]))
  times = {name: [] for name in steps}
  for _ in range(repeats):
    for name, step in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(*args_by_name[name]))
      times[name].append(1e3 * (time.perf_counter() - t0))
  return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, default=None,
                      help="T (default 4096; 512 with --quick)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed rounds (default 10; 3 with --quick)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
  parser.add_argument("--quick", action="store_true", help="small T and few repeats (smoke run)")
  parser.add_argument("--gather-gib", type=float, default=1.0,
                      help="skip the gather MoDE where its [T, k*R, Q] tensor is larger")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help="comma-separated subset of: " + ", ".join(METHODS))
  args = parser.parse_args()
  t = args.tokens or (512 if args.quick else 4096)
  repeats = args.repeats or (3 if args.quick else 10)
  names = [n.strip() for n in args.methods.split(",")]
  unknown = [n for n in names if n not in METHODS]
  if unknown:
    parser.error(f"unknown --methods {unknown}; known: {list(METHODS)}")

  dev = jax.devices()[0]
  print(f"jax {jax.__version__}, {dev.platform} ({dev.device_kind}), {os.cpu_count()} CPUs, "
        f"float32, T={t}, median of {repeats} interleaved rounds after {args.warmup} warm-up, "
        f"load average {os.getloadavg()[0]:.1f}\n")
  rows = []
  rng = np.random.default_rng(0)
  for p_in, q_out in SHAPES:
    x_td = jnp.asarray(rng.normal(size=(t, p_in)), jnp.float32)
    ct_tf = jnp.asarray(rng.normal(size=(t, q_out)), jnp.float32)
    steps, step_args, skipped = {}, {}, {}
    for name in names:
      kind, r, e, p, k = METHODS[name]
      gib = t * (k or 0) * r * q_out * 4 / 2**30
      if kind == "mode_gather" and gib > args.gather_gib:
        skipped[name] = f"skipped: gathered [T, k*R, Q] is {gib:.1f} GiB"
        continue
      steps[name], params = build_step(kind, r, e, p, p_in, q_out, k)
      step_args[name] = (params, x_td, ct_tf)
    ms_by_name = time_steps(steps, step_args, args.warmup, repeats)
    base_ms = ms_by_name.get("LoRA 64")
    for name in names:
      kind, r, e, p, k = METHODS[name]
      flops = forward_flops(kind, t, p_in, q_out, r, e, p, k)
      if name in skipped:
        rows.append((name, f"{p_in}x{q_out}", None, None, flops))
        print(f"  {name:24s} {p_in}x{q_out}: {skipped[name]}", flush=True)
        continue
      ms = ms_by_name[name]
      rows.append((name, f"{p_in}x{q_out}", ms, ms / base_ms if base_ms else float("nan"), flops))
      print(f"  {name:24s} {p_in}x{q_out}: {ms:9.1f} ms", flush=True)
    del steps, step_args

  print("\n| method | shape (P x Q) | time (ms) | ratio to LoRA 64 | forward GFLOPs |")
  print("|---|---|---:|---:|---:|")
  for name, shape, ms, ratio, flops in rows:
    if ms is None:
      print(f"| {name} | {shape} | skipped (memory) | | {flops / 1e9:.2f} |")
    else:
      print(f"| {name} | {shape} | {ms:.1f} | {ratio:.2f} | {flops / 1e9:.2f} |")


if __name__ == "__main__":
  main()
