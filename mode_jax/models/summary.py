"""Prints a model's parameter table and runs one forward pass.

    python -m mode_jax.models.summary [--model tiny] [--kind mode --rank 4 --experts 16]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from mode_jax import adapters
from mode_jax import models


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--model", default="tiny", choices=models.config_names())
  ap.add_argument("--kind", default="mode", choices=adapters.KINDS)
  ap.add_argument("--rank", type=int, default=4)
  ap.add_argument("--experts", type=int, default=16)
  ap.add_argument("--expert_rank", type=int, default=1)
  ap.add_argument("--targets", default="q,k,v,o")
  args = ap.parse_args(argv)
  cfg = models.get_config(args.model)
  acfg = adapters.AdapterConfig(
      kind=args.kind, rank=args.rank,
      targets=tuple(args.targets.split(",")),
      **{f: v for f, v in (("num_experts", args.experts), ("expert_rank", args.expert_rank))
         if f in adapters.registry.get(args.kind).options})
  counts = adapters.count_params(cfg, acfg)
  print(f"model {cfg.name}: non-embedding {cfg.non_embedding_params():,}, "
        f"embedding {cfg.embedding_params():,}")
  print(f"adapter {acfg.kind} E={acfg.num_experts} R={acfg.rank} p={acfg.expert_rank}")
  print("| target | P | Q | per layer | total |\n|---|---|---|---|---|")
  for t, c in counts["per_target"].items():
    print(f"| {t} | {c['P']} | {c['Q']} | {c['per_layer']:,} | {c['trainable']:,} |")
  print(f"trainable {counts['trainable']:,} = {counts['percent_of_base']:.2f}% of base")
  if cfg.num_layers * cfg.embed_dim <= 4096:
    model = models.build_model(cfg, acfg)
    graphdef, state = nnx.split(model)  # merged inside: the adapters sow statistics
    logits = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, jnp.zeros((1, 8), jnp.int32))
    print(f"forward pass: logits {logits.shape} {logits.dtype}")


if __name__ == "__main__":
  main()
