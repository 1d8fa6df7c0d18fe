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
packing starts each segment with 0), for a packer. The test compares rows
with seqio's converter.
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
