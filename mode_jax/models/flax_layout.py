"""The official Flax/Orbax layout of Gemma 1 / Gemma 2 (Kaggle, `gemma` package).

The release is an Orbax PyTree checkpoint. Two structures of the same names
are accepted: the released one, flat keys under "transformer/" with a `w`
leaf (`{"transformer/layer_0/attn/q_einsum": {"w": ...}}`), and the nested
`model.init()["params"]` one of Google DeepMind's `gemma` package
(`{"layer_0": {"attn": {"q_einsum": {"w": ...}}}}`, optionally under a
"transformer" key, with `mlp/gating_einsum` and `mlp/linear` as plain
arrays). Names below are given without the "transformer/" prefix:

  embedder/input_embedding        [V, D]           embedder/input_embedding
  layer_N/attn/q_einsum/w         [H, D, K]        attn/q/kernel [D, H, K]
  layer_N/attn/kv_einsum/w        [2, N, D, K]     attn/k, attn/v [D, N, K]   (N != H)
  layer_N/attn/qkv_einsum/w       [3, H, D, K]     attn/q, attn/k, attn/v     (N == H)
  layer_N/attn/attn_vec_einsum/w  [H, K, D]        attn/o/kernel [H, K, D]
  layer_N/mlp/gating_einsum       [2, D, F] or [2, F, D] (gate, then up)
                                                   mlp/gate, mlp/up [D, F]
  layer_N/mlp/linear              [F, D]           mlp/down/kernel [F, D]
  layer_N/{pre_attention_norm, pre_ffw_norm, post_attention_norm,
           post_ffw_norm}/scale   [D]              same names (post: Gemma 2)
  final_norm/scale                [D]              final_norm/scale

`gating_einsum` is [2, D, F] in the `gemma` package's default and [2, F, D]
in checkpoints made with `transpose_gating_einsum` (Gemma 2 9B / 27B); the
orientation is read from the shape (when D == F the package default wins).

The checkpoint is restored with each tensor already sharded like the
parameter it becomes, then transposed on the devices tensor by tensor.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from mode_jax import files
from mode_jax.models import config as config_lib
from mode_jax.models import layout

_ORBAX_MARKERS = ("_METADATA", "checkpoint", "manifest.ocdbt", "_CHECKPOINT_METADATA")
_PREFIXES = ("transformer",)
_GEMMA2_27B = (4608, 32, 128)  # (D, H, K): queries scaled by (D / H) ** -0.5


def _is_orbax_dir(path: str) -> bool:
  return files.isdir(path) and any(files.exists(files.join(path, m)) for m in _ORBAX_MARKERS)


def find_checkpoint(path: str) -> str | None:
  """The Orbax directory at `path`, or its only Orbax subdirectory (Kaggle's `2b/`)."""
  if _is_orbax_dir(path):
    return path
  if not files.isdir(path):
    return None
  subs = [files.join(path, s) for s in files.listdir(path)]
  subs = [s for s in subs if _is_orbax_dir(s)]
  return subs[0] if len(subs) == 1 else None


def detect(path: str) -> bool:
  return find_checkpoint(path) is not None


def _key_str(k) -> str:
  return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))


def _metadata(ckpt: str) -> Any:
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(ckpt)
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if tree is None:
    raise layout.PretrainedError(f"Orbax checkpoint {ckpt!r} has no item metadata")
  return tree


def canonical(keys: tuple[str, ...]) -> str:
  """One name for both structures: "layer_0/mlp/gating_einsum", no prefix, no mlp `w`."""
  parts = [p for k in keys for p in k.split("/")]
  if parts and parts[0] in _PREFIXES:
    parts = parts[1:]
  if len(parts) >= 3 and parts[-3] == "mlp" and parts[-1] == "w":
    parts = parts[:-1]
  return "/".join(parts)


def flatten(tree: Any) -> tuple[dict[str, tuple], dict[str, str]]:
  """({canonical name: (shape, dtype)}, {canonical: stored name}) of a param tree.

  Leaves are anything with `shape` and `dtype` (arrays, ShapeDtypeStructs,
  Orbax metadata).
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  found, original = {}, {}
  for kp, leaf in leaves:
    keys = tuple(_key_str(k) for k in kp)
    name = canonical(keys)
    found[name] = (tuple(leaf.shape), np.dtype(leaf.dtype))
    original[name] = "/".join(keys)
  return found, original


def _flat_metadata(ckpt: str):
  """(metadata tree, {canonical name: (shape, dtype)}, {canonical: original name})."""
  tree = _metadata(ckpt)
  found, original = flatten(tree)
  if any("stacked_layers" in n for n in found):
    raise layout.PretrainedError(f"{ckpt!r} uses the stacked (Gemma 3) layout, which is "
                                 "not supported")
  return tree, found, original


def read_config(path: str, param_dtype: str | None = None) -> config_lib.ModelConfig:
  """Infers the ModelConfig from the tensor shapes of the official checkpoint."""
  ckpt = find_checkpoint(path)
  _, found, _ = _flat_metadata(ckpt)
  return infer_config(found, param_dtype, where=ckpt)


def infer_config(found: Mapping[str, tuple], param_dtype: str | None = None,
                 where: str = "") -> config_lib.ModelConfig:
  """The ModelConfig of an official tree, from its shapes.

  Gemma 2 is recognised by its post-norms and gets Gemma 2's fixed options
  (soft-caps 50 / 30, local-global alternation, window 4096).

  Args:
    found: canonical name -> (shape, dtype), as from `flatten`.
    param_dtype: "float32" or "bfloat16" (default: the embedding's dtype).
    where: the checkpoint path, for messages.
  """
  shape = lambda n: found[n][0] if n in found else None  # noqa: E731

  def lacks(name):
    return layout.PretrainedError(f"official checkpoint {where!r} lacks tensor {name!r}")

  emb = shape("embedder/input_embedding")
  if emb is None:
    raise lacks("transformer/embedder/input_embedding")
  v, d = emb
  layers = {n.split("/")[0] for n in found if n.startswith("layer_")}
  qkv = shape("layer_0/attn/qkv_einsum/w")
  if qkv is not None:
    _, h, _, k = qkv
    n = h
  else:
    q, kv = shape("layer_0/attn/q_einsum/w"), shape("layer_0/attn/kv_einsum/w")
    if q is None or kv is None:
      raise lacks("transformer/layer_0/attn/q_einsum/w (or qkv_einsum/w)")
    h, _, k = q
    n = kv[1]
  linear = shape("layer_0/mlp/linear")
  if linear is None:
    raise lacks("transformer/layer_0/mlp/linear")
  kw = dict(name="pretrained", vocab_size=v, num_layers=len(layers), embed_dim=d,
            num_heads=h, num_kv_heads=n, head_dim=k, mlp_dim=linear[0])
  if "layer_0/post_attention_norm/scale" in found:
    kw.update(query_pre_attn_scalar=d // h if (d, h, k) == _GEMMA2_27B else k,
              attn_logit_softcap=50.0, final_logit_softcap=30.0,
              attention_types=("local", "global"), sliding_window=4096, post_norms=True)
  if param_dtype is None:
    param_dtype = layout.dtype_name(found["embedder/input_embedding"][1])
  kw.update(param_dtype=param_dtype, dtype=param_dtype)
  return layout.named_config(config_lib.ModelConfig(**kw))


def is_gating_transposed(found: Mapping[str, tuple], d: int) -> bool:
  """Whether `gating_einsum` is stored [2, F, D] (else [2, D, F])."""
  shape = found.get("layer_0/mlp/gating_einsum", ((0, 0, 0),))[0]
  return len(shape) == 3 and shape[2] == d and shape[1] != d


def rules(cfg: config_lib.ModelConfig, gating_transposed: bool = False) -> list[layout.Rule]:
  """One rule per mode_jax parameter of `cfg`; names are canonical (see module doc)."""
  v, d, h, n, k, f = (cfg.vocab_size, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads,
                      cfg.head_dim, cfg.mlp_dim)
  R = layout.Rule  # noqa: N806
  out = [R("embedder/input_embedding", (v, d), "embedder/input_embedding"),
         R("final_norm/scale", (d,), "final_norm/scale")]
  norms = ["pre_attention_norm", "pre_ffw_norm"]
  if cfg.post_norms:
    norms += ["post_attention_norm", "post_ffw_norm"]
  gating = (2, f, d) if gating_transposed else (2, d, f)
  gating_axes = (1, 0) if gating_transposed else (0, 1)
  for i in range(cfg.num_layers):
    src, dst = f"layer_{i}/", f"layers/{i}/"
    if n == h:
      qkv = src + "attn/qkv_einsum/w"
      out += [R(qkv, (3, h, d, k), dst + f"attn/{t}/kernel", index=j, axes=(1, 0, 2))
              for j, t in enumerate("qkv")]
    else:
      out.append(R(src + "attn/q_einsum/w", (h, d, k), dst + "attn/q/kernel", axes=(1, 0, 2)))
      out += [R(src + "attn/kv_einsum/w", (2, n, d, k), dst + f"attn/{t}/kernel", index=j,
                axes=(1, 0, 2)) for j, t in enumerate("kv")]
    out.append(R(src + "attn/attn_vec_einsum/w", (h, k, d), dst + "attn/o/kernel"))
    out += [R(src + "mlp/gating_einsum", gating, dst + f"mlp/{t}/kernel", index=j,
              axes=gating_axes) for j, t in enumerate(("gate", "up"))]
    out.append(R(src + "mlp/linear", (f, d), dst + "mlp/down/kernel"))
    out += [R(src + f"{m}/scale", (d,), dst + f"{m}/scale") for m in norms]
  return out


def load(path: str, cfg: config_lib.ModelConfig,
         expected: Mapping[str, jax.ShapeDtypeStruct],
         shardings: Mapping[str, jax.sharding.NamedSharding]) -> dict[str, jax.Array]:
  """Restores the official tree sharded, then converts it tensor by tensor.

  Args:
    path: the checkpoint directory (or its parent holding one Orbax directory).
    cfg: the config the weights must match.
    expected: mode_jax parameter path -> ShapeDtypeStruct.
    shardings: mode_jax parameter path -> NamedSharding.

  Returns:
    mode_jax parameter path -> sharded jax.Array.
  """
  ckpt = find_checkpoint(path)
  tree, found, original = _flat_metadata(ckpt)
  rs = rules(cfg, is_gating_transposed(found, cfg.embed_dim))
  layout.check_targets(rs, expected)
  try:
    layout.check_tensors("official Flax", ckpt, rs, {n: s for n, (s, _) in found.items()})
  except layout.PretrainedError as e:  # name tensors as they are stored
    msg, released = str(e), any(o.startswith("transformer") for o in original.values())
    for n in {r.source for r in rs} | set(original):
      stored = original.get(n, f"transformer/{n}" if released else n)
      msg = msg.replace(f"tensor {n!r}", f"tensor {stored!r}")
    raise layout.PretrainedError(msg) from None

  # Each source is read in the sharding of (the first) parameter it becomes.
  src_sharding = {}
  for r in rs:
    if r.source not in src_sharding:
      t = shardings[r.target]
      spec = r.source_spec(t.spec, len(expected[r.target].shape))
      src_sharding[r.source] = jax.sharding.NamedSharding(t.mesh, spec)

  def target_leaf(kp, leaf):
    name = canonical(tuple(_key_str(k) for k in kp))
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=src_sharding[name])

  target = jax.tree_util.tree_map_with_path(target_leaf, tree)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(ckpt, target)
  leaves, _ = jax.tree_util.tree_flatten_with_path(restored)
  sources = {canonical(tuple(_key_str(k) for k in kp)): x for kp, x in leaves}
  del restored, leaves
  remaining = {}
  for r in rs:
    remaining[r.source] = remaining.get(r.source, 0) + 1
  out = {}
  for r in rs:
    out[r.target] = layout.place_device(sources[r.source], r, expected[r.target],
                                        shardings[r.target])
    remaining[r.source] -= 1
    if not remaining[r.source]:  # free each source once converted
      x = sources.pop(r.source)
      if x is not out[r.target] and not x.is_deleted():
        x.delete()
  return out
