"""seqio's PrefixLM decoder features in NumPy, one example at a time.

What an SNI task's tf.data pipeline does to one example, without TensorFlow
(the Grain loader's workers run this):

  1. the Task's preprocessors: `tasks.trim_inputs_left` keeps the last
     `inputs` tokens (no EOS on inputs); `seqio.preprocessors.
     append_eos_after_trim` keeps the first `targets - 1` target tokens and
     appends EOS;
  2. `seqio.DecoderFeatureConverter` (its PrefixLM converter, loss on
     targets only): tokens = inputs + targets, padded with 0 to
     L = inputs + targets;
       decoder_target_tokens     tokens
       decoder_input_tokens      tokens shifted right by one, 0 first (the
                                 shift runs over the padded row, so an
                                 unpacked row has its last token at
                                 position len(tokens))
       decoder_loss_weights      (token != 0) XOR (position < len(inputs)),
                                 0 on padding
       decoder_causal_attention  position < len(inputs) + 1 (the inputs and
                                 the position that predicts the first
                                 target), 0 on padding.

`unpacked` gives the padded row; `segment` gives the same features of one
example unpadded, with the shift inside the example (seqio's shift under
packing starts each segment with 0). `pack` is seqio's packer
(`utils.trim_and_pack_dataset` without custom ops, what
`DecoderFeatureConverter(pack=True)` runs): windows of L consecutive
examples (its `padded_batch(L)`), each packed next-fit (an example goes into
the open row if it fits, else the row is emitted and a new one opened; rows
never span windows), padding 0, `decoder_positions` counting within each
example, `decoder_segment_ids` 1, 2, ... per row. The tests compare rows
with seqio's converter, packed and unpacked.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_causal_attention")


def task_tokens(inputs: np.ndarray, targets: np.ndarray, lengths: Mapping[str, int],
                eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Step 1: (inputs, targets) after the SNI Task's preprocessors and trimming."""
  n_in, n_tg = lengths["inputs"], lengths["targets"]
  inputs = np.asarray(inputs, np.int32)[-n_in:] if n_in else np.zeros(0, np.int32)
  targets = np.concatenate([np.asarray(targets, np.int32)[:n_tg - 1],
                            np.array([eos_id], np.int32)])
  return inputs, targets


def segment(inputs: np.ndarray, targets: np.ndarray, lengths: Mapping[str, int],
            eos_id: int) -> dict[str, np.ndarray]:
  """The four features of one example, unpadded: int32[len(inputs) + len(targets)]."""
  inputs, targets = task_tokens(inputs, targets, lengths, eos_id)
  tokens = np.concatenate([inputs, targets])
  pos = np.arange(tokens.size)
  width = inputs.size
  shifted = np.zeros_like(tokens)
  shifted[1:] = tokens[:-1]
  return {
      "decoder_target_tokens": tokens,
      "decoder_input_tokens": shifted,
      "decoder_loss_weights": ((tokens != 0) ^ (pos < width)).astype(np.int32),
      "decoder_causal_attention": (pos < width + 1).astype(np.int32),
  }


def unpacked(inputs: np.ndarray, targets: np.ndarray, lengths: Mapping[str, int],
             eos_id: int) -> dict[str, np.ndarray]:
  """The four features of one example as a padded row: int32[inputs + targets]."""
  seg = segment(inputs, targets, lengths, eos_id)
  length = lengths["inputs"] + lengths["targets"]
  size = seg["decoder_target_tokens"].size
  row = {}
  for k, v in seg.items():
    out = np.zeros(length, np.int32)
    out[:size] = v
    row[k] = out
  # The shift runs over the padded row: the last token moves into the padding.
  if size < length:
    row["decoder_input_tokens"][size] = seg["decoder_target_tokens"][-1]
  return row


def pack(segments, length: int) -> dict[str, np.ndarray]:
  """seqio's next-fit packing of one window of `segment` dicts into int32[rows, length].

  Adds `decoder_segment_ids` and `decoder_positions`; an empty window gives
  zero rows.
  """
  rows: list[list[dict]] = []
  used = length + 1  # no open row yet
  for seg in segments:
    size = seg["decoder_target_tokens"].size
    if used + size > length:
      rows.append([])
      used = 0
    rows[-1].append(seg)
    used += size
  out = {k: np.zeros((len(rows), length), np.int32)
         for k in FEATURES + ("decoder_segment_ids", "decoder_positions")}
  for r, row in enumerate(rows):
    at = 0
    for sid, seg in enumerate(row, 1):
      size = seg["decoder_target_tokens"].size
      for k in FEATURES:
        out[k][r, at:at + size] = seg[k]
      out["decoder_segment_ids"][r, at:at + size] = sid
      out["decoder_positions"][r, at:at + size] = np.arange(size)
      at += size
  out["decoder_segment_ids"] *= out["decoder_target_tokens"] != 0  # as seqio's cumsum * mask
  return out
