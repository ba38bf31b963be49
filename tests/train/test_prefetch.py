"""The device prefetcher hands out every batch in order, unchanged and on the mesh, tracks the consumed position for
checkpoints, re-raises errors where they happened, and stops without hanging."""

from __future__ import annotations

import itertools
import json
import threading
import time

import jax
import numpy as np
import pytest

from jaxdet.data.loader import make_loader
from jaxdet.train.checkpoint import Checkpointer
from jaxdet.train.parallel import batch_sharded, make_mesh, shard_batch
from jaxdet.train.prefetch import DevicePrefetcher
from tests.data.synthetic import painted_source


class Counting:
  """An iterator of batches `{"x": [k, k]}` with grain's `get_state` / `set_state` (the next index)."""

  def __init__(self, n=None, fail_at=None, delay=0.0):
    self.k, self.n, self.fail_at, self.delay = 0, n, fail_at, delay

  def __iter__(self):
    return self

  def __next__(self):
    if self.n is not None and self.k >= self.n:
      raise StopIteration
    if self.k == self.fail_at:
      raise ValueError(f"bad record {self.k}")
    time.sleep(self.delay)
    self.k += 1
    return {"x": np.full((2,), self.k - 1, np.int32)}

  def get_state(self):
    return {"next": self.k}


@pytest.mark.parametrize("size", [0, 1, 3])
def test_batches_come_in_order_unchanged_and_on_the_mesh(size):
  mesh = make_mesh()
  with DevicePrefetcher(Counting(n=7), put=lambda b: shard_batch(b, mesh), size=size) as feed:
    got = list(feed)
  assert [int(host["x"][0]) for _, host in got] == list(range(7))
  for k, (device, host) in enumerate(got):
    assert isinstance(device["x"], jax.Array) and device["x"].sharding == batch_sharded(mesh)
    np.testing.assert_array_equal(np.asarray(device["x"]), host["x"])
    np.testing.assert_array_equal(host["x"], [k, k])


@pytest.mark.parametrize("size", [0, 2])
def test_consumed_state_is_the_position_after_the_last_batch_taken(size):
  iterator = Counting(n=10)
  feed = DevicePrefetcher(iterator, put=lambda b: b, size=size)
  assert json.loads(feed.consumed_state().get_state()) == {"next": 0}
  for k in range(4):
    next(feed)
    time.sleep(0.05)  # let the thread run ahead
    assert json.loads(feed.consumed_state().get_state()) == {"next": k + 1}
  assert iterator.k > 4 or size == 0  # the thread did read ahead; the snapshot did not follow it
  feed.close()


@pytest.mark.parametrize("size", [0, 2])
def test_errors_are_raised_at_the_batch_where_they_happened(size):
  feed = DevicePrefetcher(Counting(fail_at=3), put=lambda b: b, size=size)
  assert [int(next(feed)[1]["x"][0]) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(ValueError, match="bad record 3"):
    next(feed)
  with pytest.raises(StopIteration):
    next(feed)
  feed.close()


def test_errors_in_put_reach_the_consumer():
  def put(batch):
    if batch["x"][0] == 2:
      raise RuntimeError("cannot place batch 2")
    return batch

  feed = DevicePrefetcher(Counting(), put=put, size=2)
  next(feed), next(feed)
  with pytest.raises(RuntimeError, match="cannot place batch 2"):
    next(feed)


def test_close_does_not_hang_on_an_endless_iterator_or_a_full_queue():
  before = threading.active_count()
  start = time.perf_counter()
  for _ in range(3):
    feed = DevicePrefetcher(Counting(delay=0.001), put=lambda b: b, size=2)
    next(feed)
    time.sleep(0.05)  # the queue fills and the producer blocks on it
    feed.close()
  assert time.perf_counter() - start < 5.0
  assert threading.active_count() <= before


def test_leaving_the_with_block_on_an_exception_stops_the_thread():
  with pytest.raises(KeyError):
    with DevicePrefetcher(Counting(), put=lambda b: b, size=3) as feed:
      next(feed)
      raise KeyError("the loop failed")
  assert not feed._thread.is_alive()  # pylint: disable=protected-access


def test_a_checkpoint_of_the_consumed_state_resumes_the_loader_at_the_next_batch(tmp_path):
  source = painted_source(12, seed=1, height=48, width=48)
  kwargs = dict(batch_size=2, image_size=48, train=True, max_boxes=6, seed=3, shard_index=0, shard_count=1)
  reference = list(itertools.islice(iter(make_loader(source, **kwargs)), 8))

  iterator = iter(make_loader(source, **kwargs))
  feed = DevicePrefetcher(iterator, put=lambda b: b, size=3)
  for _ in range(5):
    next(feed)
  time.sleep(0.1)  # the thread is batches ahead of the loop
  checkpointer = Checkpointer(tmp_path, async_save=False)
  checkpointer.save(5, {"step": np.array(5, np.int32)}, loader=feed.consumed_state())
  feed.close()

  resumed = iter(make_loader(source, **kwargs))
  checkpointer.restore(5, {"step": np.array(0, np.int32)}, loader=resumed)
  checkpointer.close()
  for want in reference[5:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image_id"], want["image_id"])
    np.testing.assert_array_equal(got["image"], want["image"])
