"""Packed batches of the Grain loader: seqio's windows, resumable at (window, row).

seqio packs windows of L = inputs + targets consecutive examples, each into
a variable number of rows (`decoder_features.pack`), and batches the rows.
A window is a pure function of its index (its examples are stream positions
w * L ... w * L + L - 1), so grain reads whole windows as elements (reader
threads or worker processes compute them in any order and the output is
the same), and the position of a packed stream is two integers: the window
that holds the next row and the rows already taken from it. Restoring
recomputes that one window (L examples), whatever the step.
"""

from __future__ import annotations

import numpy as np

from mode_jax.data import decoder_features


class Windows:
  """Packed rows of each window of a stream of `decoder_features.segment` dicts.

  A grain random-access source; picklable when `source` is.
  """

  def __init__(self, source, length: int):
    self._source, self._length = source, length

  def __len__(self) -> int:
    return -(-len(self._source) // self._length)

  def __getitem__(self, w: int) -> dict:
    stop = min((w + 1) * self._length, len(self._source))
    return decoder_features.pack([self._source[p] for p in range(w * self._length, stop)],
                                 self._length)


class PackedBatches:
  """Batches of `rows` packed rows from an iterator of windows (as seqio's `.batch`).

  Args:
    windows: callable(first window) -> iterator of `Windows` elements from it.
    rows: rows per batch.
    drop_remainder: drop a last batch of fewer rows (endless streams).
    position: (window, rows already taken from it) to start at.
  """

  def __init__(self, windows, rows: int, drop_remainder: bool, position=(0, 0)):
    self._window, self._taken = int(position[0]), int(position[1])
    self._it = windows(self._window)
    self._rows, self._drop = rows, drop_remainder
    self._current = None  # the packed rows of window self._window

  def position(self) -> list[int]:
    """[window, rows taken from it]: where the next batch starts."""
    return [self._window, self._taken]

  def _fill(self) -> bool:
    """Loads the window that holds the next row; False at the end of the stream."""
    while self._current is None or self._taken >= len(self._current["decoder_target_tokens"]):
      if self._current is not None:
        self._window, self._taken = self._window + 1, 0
      try:
        self._current = next(self._it)
      except StopIteration:
        self._current = None
        return False
    return True

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = []
    need = self._rows
    while need:
      if not self._fill():
        break
      take = min(need, len(self._current["decoder_target_tokens"]) - self._taken)
      parts.append({k: v[self._taken:self._taken + take] for k, v in self._current.items()})
      self._taken += take
      need -= take
    if not parts or (need and self._drop):
      raise StopIteration
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
