"""The decoded cache holds each example as the loader would batch it, and the cached loader walks the same global
stream as `make_loader`: same images at the same positions, split over hosts, resumable, saved and reloaded."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxdet.data.cache import build_cache, make_cached_loader
from jaxdet.data.loader import make_loader
from jaxdet.data.source import ListSource
from jaxdet.data.transforms import eval_transform
from tests.data.synthetic import painted_source

SOURCE = painted_source(10, seed=2, height=72, width=96)


def test_rows_are_the_examples_padded_and_counted():
  cache = build_cache(SOURCE, image_size=(72, 96), max_boxes=3, threads=2)
  assert len(cache) == 10 and cache.image_size == (72, 96) and cache.max_boxes == 3
  for i in range(10):
    ex = SOURCE[i]
    row = cache.gather(np.array([i]))
    np.testing.assert_array_equal(row["image"][0], ex["image"])
    np.testing.assert_array_equal(row["boxes"][0], ex["boxes"][:3])
    np.testing.assert_array_equal(row["labels"][0], ex["labels"][:3])
    np.testing.assert_array_equal(row["crowd"][0], ex["crowd"][:3])
    assert row["valid"][0].tolist() == [True] * 3 and row["num_truncated"][0] == len(ex["boxes"]) - 3
    assert row["image_id"][0] == ex["image_id"] and row["frame"][0].tolist() == [1, 1, 0, 0]


def test_other_sizes_are_letterboxed_whole():
  cache = build_cache(SOURCE, image_size=64, max_boxes=8, fill=7)
  for i in (0, 5):
    want = eval_transform(SOURCE[i], 64, mode="letterbox", fill=7)
    row = cache.gather(np.array([i]))
    np.testing.assert_array_equal(row["image"][0], want["image"])
    np.testing.assert_allclose(row["boxes"][0, :len(want["boxes"])], want["boxes"])
    np.testing.assert_allclose(row["frame"][0], want["frame"])


@pytest.mark.parametrize("num_epochs", [None, 2])
def test_the_stream_is_make_loaders(num_epochs):
  cache = build_cache(SOURCE, image_size=(72, 96), max_boxes=8)
  common = dict(batch_size=4, seed=7, shard_index=0, shard_count=1, num_epochs=num_epochs)
  host = make_loader(SOURCE, image_size=(72, 96), train=True, max_boxes=8, **common)
  cached = make_cached_loader(cache, **common)
  assert cached.num_batches == host.num_batches
  steps = 5 if num_epochs is None else cached.num_batches
  got = list(itertools.islice(iter(cached), steps))
  want = list(itertools.islice(iter(host), steps))
  assert len(got) == steps and (num_epochs is None or len(list(iter(cached))) == 5)
  for k, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_array_equal(g["image_id"], w["image_id"])
    np.testing.assert_array_equal(g["position"], np.arange(4 * k, 4 * k + 4))
    assert g["image"].dtype == np.uint8 and g["example_valid"].all()


def test_hosts_batches_concatenate_to_the_one_host_batch():
  cache = build_cache(SOURCE, image_size=(72, 96), max_boxes=8)
  one = list(itertools.islice(iter(make_cached_loader(cache, batch_size=6, seed=1, shard_index=0, shard_count=1)), 4))
  hosts = [list(itertools.islice(iter(make_cached_loader(cache, batch_size=3, seed=1, shard_index=h, shard_count=2)),
                                 4)) for h in range(2)]
  for step in range(4):
    for key in ("image_id", "position", "image", "boxes"):
      np.testing.assert_array_equal(np.concatenate([hosts[0][step][key], hosts[1][step][key]]), one[step][key])


def test_the_iterator_resumes_from_its_state():
  cache = build_cache(SOURCE, image_size=(72, 96), max_boxes=8)
  loader = make_cached_loader(cache, batch_size=4, seed=3, shard_index=0, shard_count=1)
  it = iter(loader)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it)["position"] for _ in range(2)]
  again = iter(loader)
  again.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(again)["position"], w)


def test_a_saved_cache_is_reloaded_and_a_stale_one_rebuilt(tmp_path):
  directory = tmp_path / "cache"
  first = build_cache(SOURCE, image_size=(72, 96), max_boxes=8, directory=directory)
  assert (directory / "cache.json").exists()
  second = build_cache(SOURCE, image_size=(72, 96), max_boxes=8, directory=directory)
  assert isinstance(second.arrays["image"], np.memmap)
  for key, value in first.arrays.items():
    np.testing.assert_array_equal(second.arrays[key], value)
  smaller = ListSource([SOURCE[i] for i in range(4)], SOURCE.class_names)
  third = build_cache(smaller, image_size=(72, 96), max_boxes=8, directory=directory)  # another length: rebuilt
  assert len(third) == 4 and len(build_cache(smaller, image_size=(72, 96), max_boxes=8, directory=directory)) == 4


def test_an_empty_cache_is_refused():
  cache = build_cache(ListSource([], ["a"]), image_size=8, max_boxes=2)
  with pytest.raises(ValueError, match="at least one example"):
    make_cached_loader(cache, batch_size=2, shard_index=0, shard_count=1)
