"""MemoizedSource: the same examples and batches as the source, each read once, within its byte budget."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from jaxdet.data.loader import make_loader
from jaxdet.data.memoized import MemoizedSource
from jaxdet.data.source import ListSource
from jaxdet.data.transforms import Augment, SSDAugment
from tests.data.synthetic import painted_source

SOURCE = painted_source(6, seed=3, height=40, width=56, boxes_per_image=3)
EXAMPLE_BYTES = sum(np.asarray(v).nbytes for v in SOURCE[0].values())


class CountingSource(ListSource):
  """A ListSource that counts its reads per index."""

  def __init__(self, source: ListSource):
    super().__init__([source[i] for i in range(len(source))], source.class_names)
    self.reads = [0] * len(source)

  def __getitem__(self, index):
    self.reads[range(len(self))[index]] += 1
    return super().__getitem__(index)


def _assert_examples_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key


CENTERNET = Augment(scale_range=(0.6, 1.3), brightness=0.4, contrast=0.4, saturation=0.4, lighting=0.1)


@pytest.mark.parametrize("augment, mosaic_prob", [(CENTERNET, 0.0), (CENTERNET, 0.5), (SSDAugment(), 0.0)])
def test_loader_yields_the_same_batches_over_several_epochs(augment, mosaic_prob):
  # Every augmentation (scale + crop, colour jitter, Mosaic's partners, SSD's photometric / zoom-out / crop) reads
  # the kept examples; three epochs re-read every one.
  memo = MemoizedSource(SOURCE, max_bytes=1 << 30)
  batches = []
  for source in (SOURCE, memo):
    it = iter(make_loader(source, batch_size=2, image_size=(32, 48), train=True, max_boxes=4, seed=5,
                          augment=augment, mosaic_prob=mosaic_prob, shard_index=0, shard_count=1))
    batches.append([next(it) for _ in range(9)])
    it.close()
  for plain, kept in zip(*batches):
    _assert_examples_equal(plain, kept)
  assert memo.kept == len(SOURCE)


def test_each_example_is_read_once_and_returned_as_the_source_returns_it():
  counting = CountingSource(SOURCE)
  memo = MemoizedSource(counting, max_bytes=1 << 30)
  for _ in range(3):
    for i in range(len(memo)):
      _assert_examples_equal(memo[i], SOURCE[i])
  assert counting.reads == [1] * len(SOURCE)
  assert memo.kept_bytes == len(SOURCE) * EXAMPLE_BYTES
  _assert_examples_equal(memo[-1], SOURCE[len(SOURCE) - 1])
  with pytest.raises(IndexError):
    memo[len(SOURCE)]  # pylint: disable=pointless-statement


def test_keeps_examples_only_up_to_the_budget():
  counting = CountingSource(SOURCE)
  memo = MemoizedSource(counting, max_bytes=int(2.5 * EXAMPLE_BYTES))
  for _ in range(2):
    for i in range(len(memo)):
      _assert_examples_equal(memo[i], SOURCE[i])
  assert memo.kept == 2 and memo.kept_bytes == 2 * EXAMPLE_BYTES
  assert counting.reads == [1, 1, 2, 2, 2, 2]  # the first two kept, the rest read each time
  off = MemoizedSource(CountingSource(SOURCE), max_bytes=0)
  off[0], off[0]  # pylint: disable=pointless-statement
  assert off.kept == 0 and off.source.reads[0] == 2


def test_kept_arrays_are_read_only_and_each_call_returns_a_new_dict():
  memo = MemoizedSource(SOURCE, max_bytes=1 << 30)
  first = memo[0]
  with pytest.raises(ValueError, match="read-only"):
    first["image"][0, 0, 0] = 7
  first["example_valid"] = np.bool_(True)  # what the loader adds; must not reach the next epoch
  assert "example_valid" not in memo[0] and memo[0] is not memo[0]
  np.testing.assert_array_equal(memo[0]["image"], SOURCE[0]["image"])


def test_a_pickled_copy_starts_empty_and_reads_the_same_examples():
  memo = MemoizedSource(SOURCE, max_bytes=1 << 30)
  memo[0], memo[1]  # pylint: disable=pointless-statement
  copy = pickle.loads(pickle.dumps(memo))
  assert memo.kept == 2 and copy.kept == 0 and copy.max_bytes == memo.max_bytes
  _assert_examples_equal(copy[1], SOURCE[1])
  assert copy.kept == 1


def test_delegates_what_evaluation_reads_and_refuses_a_negative_budget():
  memo = MemoizedSource(SOURCE, max_bytes=1 << 20)
  assert len(memo) == len(SOURCE) and memo.class_names == SOURCE.class_names
  assert memo.category_ids == SOURCE.category_ids and memo.coco_ground_truth() == SOURCE.coco_ground_truth()
  with pytest.raises(ValueError, match="max_bytes"):
    MemoizedSource(SOURCE, max_bytes=-1)
