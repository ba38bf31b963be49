"""A source that keeps the examples it has read, so that later epochs skip reading and decoding them.

Training reads every example once per epoch, and reading is most of the host's work per image: for the 128²
`shapes` set, the array_record read and PNG decode take about four fifths of the default host pipeline's time
(flip + collate are the rest: 0.94 ms per image against 0.18, `docs/benchmarks.md`). `MemoizedSource(source,
max_bytes=...)` returns the wrapped source's own examples, byte for byte —
a loader over it yields exactly the batches it yields over `source`, so a run's numbers do not change — and keeps
each one after its first read, until `max_bytes` of arrays are kept.

Kept arrays are made read-only and every call returns a new dict of them, so a transform that wrote into an
example in place would raise instead of silently changing the next epoch (jaxdet's transforms build new arrays).
Past the budget, examples are read from `source` each time; nothing is evicted. Threads may read the same new
example at once (grain reads ahead); each reads it, one copy is kept. The memo belongs to one process:
a pickled copy (a grain worker) starts empty and keeps its own.

Differs from `jaxdet.data.cache.DecodedCache`, which letterboxes every image to one size and truncates boxes for
the device-side augmentation: this one changes nothing, it only remembers.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from jaxdet.data.source import DetectionSource, Example, WrappedSource


class MemoizedSource(WrappedSource):
  """`source` with each example kept after its first read, up to `max_bytes` of arrays (module docstring)."""

  def __init__(self, source: DetectionSource, *, max_bytes: int):
    if max_bytes < 0:
      raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    super().__init__(source)
    self.max_bytes = int(max_bytes)
    self._init_memo()

  def _init_memo(self) -> None:
    self._kept: dict[int, Example] = {}
    self._kept_bytes = 0
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, Any]:
    return {"source": self.source, "max_bytes": self.max_bytes}  # a copy starts with an empty memo

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._init_memo()

  @property
  def kept(self) -> int:
    """Number of examples kept."""
    return len(self._kept)

  @property
  def kept_bytes(self) -> int:
    """Bytes of the kept examples' arrays."""
    return self._kept_bytes

  def __getitem__(self, index: int) -> Example:
    index = range(len(self.source))[index]  # negative indices as the source's; IndexError past the end
    example = self._kept.get(index)
    if example is None:
      example = self.source[index]
      size = sum(np.asarray(v).nbytes for v in example.values())
      with self._lock:
        if index not in self._kept and self._kept_bytes + size <= self.max_bytes:
          for value in example.values():
            if isinstance(value, np.ndarray):
              value.flags.writeable = False
          self._kept[index] = example
          self._kept_bytes += size
    return dict(example)
