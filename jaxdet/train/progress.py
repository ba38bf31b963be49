"""A progress bar for long work: step, loss, images per second and ETA (tqdm), shown by process 0 only."""

from __future__ import annotations

import sys
import time
from typing import Mapping

import tqdm


class Progress:
  """`Progress(total, initial=step)`; call `update(step, metrics, images)` after each step, `close()` at the end.

  The bar shows the step out of `total`, the ETA and rate tqdm computes, and a postfix with the latest loss and
  the measured images per second (over the steps since the last update that had metrics).
  """

  def __init__(self, total: int, *, initial: int = 0, desc: str = "train", enabled: bool = True):
    self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                          disable=not enabled, file=sys.stderr, mininterval=1.0, smoothing=0.1)
    self._last_time = time.perf_counter()
    self._images = 0
    self.images_per_second = 0.0

  def restart_rate(self) -> None:
    """Starts measuring images per second afresh (e.g. after the first step, which includes compilation)."""
    self._last_time, self._images = time.perf_counter(), 0

  def update(self, step: int, *, images: int, metrics: Mapping[str, float] | None = None) -> None:
    self._images += images
    self._bar.update(step - self._bar.n)
    if metrics is not None:
      now = time.perf_counter()
      self.images_per_second = self._images / max(now - self._last_time, 1e-9)
      self._last_time, self._images = now, 0
      postfix = {k: f"{float(v):.4f}" for k, v in metrics.items() if k in ("loss",)}
      self._bar.set_postfix(postfix | {"img/s": f"{self.images_per_second:.1f}"}, refresh=False)

  def write(self, message: str) -> None:
    """Prints a line above the bar."""
    self._bar.write(message, file=sys.stderr)

  def close(self) -> None:
    self._bar.close()
