"""Prefetch to the device: a background thread that keeps the next N batches on the mesh while the step runs.

The training loop reads a host iterator (grain) and puts each batch on the devices (`parallel.shard_batch`).
Done inline, the host read and the host-to-device copy of step t+1 wait until the loop comes back from step t's
bookkeeping; with `DevicePrefetcher(iterator, put=..., size=N)` a thread reads and puts up to N batches ahead
(flax's `prefetch_to_device` idea, with a thread so that the loop's blocking reads — metrics, checkpoints — do not
stall the feed). Batches come out in the iterator's order, unchanged.

Checkpoints: the wrapped iterator runs up to N + 1 batches ahead of what the loop has consumed, so saving *its*
position would skip those batches on resume. The thread records the iterator's state right after reading each
batch and hands it out with the batch; `consumed_state()` is the position after the last batch the loop took,
which is what a checkpoint must hold (resume restores the iterator itself, before a prefetcher wraps it).

Shutdown: `close()` (or leaving a `with` block, or garbage collection) stops the thread without waiting for the
queue to drain; an exception raised by the iterator or by `put` is re-raised in the consumer at the batch where it
happened, after the batches before it.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Callable, Iterator

_POLL_SECONDS = 0.05  # how often a blocked producer looks at the stop flag


class _End:
  """Queue marker: the iterator is exhausted (`error` None) or raised `error`."""

  def __init__(self, error: BaseException | None = None):
    self.error = error


class FrozenState:
  """A grain-checkpointable snapshot: `get_state()` returns the stored iterator state (JSON bytes).

  grain's orbax handler saves any item with `get_state() -> bytes` (its non-`DatasetIterator` branch), and
  restores into a real iterator from the same JSON, so a checkpoint written from a `FrozenState` restores into
  the grain iterator exactly as one written from the iterator itself.
  """

  def __init__(self, state: Any):
    self._state = state

  def get_state(self) -> bytes:
    return self._state if isinstance(self._state, bytes) else json.dumps(self._state, indent=4).encode()


def _get_state(iterator: Any) -> Any:
  get = getattr(iterator, "get_state", None)
  return get() if get is not None else None


class DevicePrefetcher:
  """Iterates over `(put(batch), batch)` for the batches of `iterator`, computing `put` up to `size` batches ahead.

  Args:
    iterator: the host iterator (e.g. a `grain.DatasetIterator`); only the prefetcher reads it once iteration
      starts.
    put: host batch -> device batch (e.g. `shard_batch` of the fields the step reads, onto the mesh's batch
      sharding); it runs in the thread, so the copy overlaps the running step.
    size: batches held ready on the device. 0 reads and puts inline in `__next__` (no thread): today's loop.

  `consumed_state()` is a `FrozenState` of the iterator's position after the last batch returned (or the
  position at construction before any), for `Checkpointer.save(..., loader=...)`.
  """

  def __init__(self, iterator: Iterator[Any], *, put: Callable[[Any], Any], size: int = 2):
    if size < 0:
      raise ValueError(f"prefetch size must be >= 0, got {size}")
    self._iterator = iterator
    self._put = put
    self._size = size
    self._state = _get_state(iterator)
    self._stop = threading.Event()
    self._done = False
    self._thread = None
    if size > 0:
      self._queue: queue.Queue = queue.Queue(maxsize=size)
      self._thread = threading.Thread(target=self._produce, name="jaxdet-device-prefetch", daemon=True)
      self._thread.start()

  def _offer(self, item: Any) -> bool:
    """Puts `item` on the queue unless stopped first; returns whether it went in."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        continue
    return False

  def _produce(self) -> None:
    try:
      for batch in self._iterator:
        state = _get_state(self._iterator)
        if self._stop.is_set() or not self._offer((self._put(batch), batch, state)):
          return
      self._offer(_End())
    except BaseException as e:  # noqa: BLE001  (handed to the consumer, which re-raises it)
      self._offer(_End(e))

  def __iter__(self) -> "DevicePrefetcher":
    return self

  def __next__(self) -> tuple[Any, Any]:
    """Returns `(device batch, host batch)` of the next batch; raises StopIteration at the end."""
    if self._done:
      raise StopIteration
    if self._thread is None:
      try:
        batch = next(self._iterator)
        item = (self._put(batch), batch, _get_state(self._iterator))
      except BaseException:  # the end or an error: later calls raise StopIteration, as with the thread
        self._done = True
        raise
    else:
      while True:  # a timed get, so that Ctrl-C reaches a consumer waiting on a slow loader
        try:
          item = self._queue.get(timeout=1.0)
          break
        except queue.Empty:
          if not self._thread.is_alive() and self._queue.empty():
            self._done = True
            raise RuntimeError("the device prefetch thread ended without a batch or an error") from None
      if isinstance(item, _End):
        self._done = True
        self.close()
        if item.error is not None:
          raise item.error
        raise StopIteration
    device_batch, batch, self._state = item
    return device_batch, batch

  def consumed_state(self) -> FrozenState:
    """Returns the iterator's position after the last batch handed out, as a grain-checkpointable snapshot."""
    return FrozenState(self._state)

  def close(self) -> None:
    """Stops the thread (without draining the iterator) and drops the batches it had ready."""
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=10.0)
    if self._thread is not None:
      while True:
        try:
          self._queue.get_nowait()
        except queue.Empty:
          break

  def __enter__(self) -> "DevicePrefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    self._stop.set()
