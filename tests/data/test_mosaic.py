"""Mosaic: four images tile the output around a random centre, each box stays on its pixels and in its quadrant."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdet.data.mosaic import mosaic
from jaxdet.data.source import to_original_frame
from tests.data.synthetic import assert_boxes_match_pixels, color_mask, painted_example


def _four(seed, shapes=((72, 96), (96, 72), (60, 60), (40, 120))):
  """Four painted examples with disjoint colours (4 each) and backgrounds `BACKGROUNDS[k]` instead of black."""
  rng = np.random.default_rng(seed)
  colors = rng.permutation(16).reshape(4, 4)
  examples = []
  for k, ((h, w), c) in enumerate(zip(shapes, colors)):
    ex = painted_example(rng, height=h, width=w, colors=c, image_id=10 + k, margin=3)
    ex["image"][np.all(ex["image"] == 0, axis=-1)] = BACKGROUNDS[k]
    examples.append(ex)
  return examples


BACKGROUNDS = np.array([(1, 2, 3), (30, 2, 3), (1, 30, 3), (1, 2, 30)], np.uint8)  # far from every palette colour


def _extent(image, color):
  """(x1, y1, x2, y2) pixel extent of the exact colour `color`."""
  ys, xs = np.nonzero(np.all(image == color, axis=-1))
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


@pytest.mark.parametrize("size", [96, (80, 128)])
@pytest.mark.parametrize("seed", range(6))
def test_boxes_stay_on_their_pixels_and_in_their_quadrant(size, seed):
  examples = _four(seed)
  out = mosaic(examples, size, rng=np.random.default_rng(seed))
  h, w = (size, size) if isinstance(size, int) else size
  assert out["image"].shape == (h, w, 3) and out["image"].dtype == np.uint8
  assert_boxes_match_pixels(out["image"], out["boxes"], out["labels"])
  # Source k shows in quadrant k (TL, TR, BL, BR): its background's extent; its kept boxes lie inside it.
  extents = np.stack([_extent(out["image"], bg) for bg in BACKGROUNDS])
  cx, cy = extents[0, 2], extents[0, 3]
  np.testing.assert_allclose(extents, [[0, 0, cx, cy], [cx, 0, w, cy], [0, cy, cx, h], [cx, cy, w, h]], atol=1)
  for k, ex in enumerate(examples):
    mine = np.isin(out["labels"], ex["labels"])
    boxes = out["boxes"][mine]
    assert np.all(boxes[:, :2] >= extents[k, :2] - 1) and np.all(boxes[:, 2:] <= extents[k, 2:] + 1)
    idx = [int(np.nonzero(ex["labels"] == label)[0][0]) for label in out["labels"][mine]]
    np.testing.assert_array_equal(out["crowd"][mine], ex["crowd"][idx])
    np.testing.assert_array_equal(out["difficult"][mine], ex["difficult"][idx])
  assert len(out["labels"]) == len(set(out["labels"].tolist())) <= 16


@pytest.mark.parametrize("seed", range(8))
def test_composed_scale_crop_keeps_boxes_on_their_pixels(seed):
  examples = _four(seed)
  out = mosaic(examples, (96, 80), rng=np.random.default_rng(seed), scale_range=(0.6, 1.3))
  assert out["image"].shape == (96, 80, 3)
  assert_boxes_match_pixels(out["image"], out["boxes"], out["labels"])
  for k, ex in enumerate(examples):
    mine = np.isin(out["labels"], ex["labels"])
    if mine.any():  # then part of source k is in view, and its boxes lie within it
      extent = _extent(out["image"], BACKGROUNDS[k])
      boxes = out["boxes"][mine]
      assert np.all(boxes[:, :2] >= extent[:2] - 1) and np.all(boxes[:, 2:] <= extent[2:] + 1)
  # Image 0 (72 x 96) covers a top-left quadrant of 20..60 x 24..72 px at scale 1/3 .. 1; the crop zooms by
  # 1 / 1.3 .. 1 / 0.6 on top.
  assert 1 / 3 / 1.3 - 1e-6 <= out["frame"][0] <= 1 / 0.6 + 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_output_is_covered_by_the_four_images(seed):
  examples = _four(seed)
  out = mosaic(examples, 64, rng=np.random.default_rng(seed), fill=114)
  assert not np.any(np.all(out["image"] == 114, axis=-1))


def test_frame_maps_the_first_images_boxes_back():
  examples = _four(0)
  for seed in range(8):
    out = mosaic(examples, 128, rng=np.random.default_rng(seed), min_visible=0.0)
    first = np.isin(out["labels"], examples[0]["labels"])
    back = to_original_frame(out["boxes"][first], out["frame"])
    idx = [int(np.nonzero(examples[0]["labels"] == label)[0][0]) for label in out["labels"][first]]
    original = examples[0]["boxes"][idx]
    assert np.all(back[:, :2] >= original[:, :2] - 1e-3) and np.all(back[:, 2:] <= original[:, 2:] + 1e-3)
    assert out["image_id"] == examples[0]["image_id"]


def test_boxes_cut_by_the_quadrant_are_dropped_by_the_visibility_rule():
  examples = _four(1)
  kept = []
  for min_visible in (0.0, 0.5, 0.99):
    out = mosaic(examples, 96, rng=np.random.default_rng(5), min_visible=min_visible)
    kept.append(set(out["labels"].tolist()))
    for label in set(range(16)) - kept[-1]:
      present = color_mask(out["image"], label).sum()
      assert present == 0 or min_visible > 0  # only the visibility rule may drop a box that is still in view
  assert kept[0] >= kept[1] >= kept[2] and kept[0] != kept[2]


def test_deterministic_given_the_generator_and_needs_four_images():
  examples = _four(2)
  a = mosaic(examples, 64, rng=np.random.default_rng(9))
  b = mosaic(examples, 64, rng=np.random.default_rng(9))
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["boxes"], b["boxes"])
  with pytest.raises(ValueError):
    mosaic(examples[:3], 64, rng=np.random.default_rng(0))
