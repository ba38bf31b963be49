"""SSD's augmentation: zoom-out and the min-IoU crop keep boxes on their pixels, the crop's box rules on hand-made
cases and under each sampling option, the photometric distortion against a colorsys transcription, and the
loader's `ssd` pipeline."""

from __future__ import annotations

import colorsys

import ml_collections
import numpy as np
import pytest

from jaxdet.data import geometric, transforms as T
from jaxdet.data.loader import make_loader
from jaxdet.data.photometric import hsv_to_rgb, rgb_to_hsv
from jaxdet.data.source import make_example, to_original_frame
from jaxdet.train.inputs import train_augment
from tests.data.synthetic import assert_boxes_match_pixels, painted_source

SOURCE = painted_source(6, seed=5, height=72, width=96)
NO_COLOR = T.SSDAugment(photometric_prob=0.0)

GEOMETRIC = {
    "zoom_out": lambda ex, rng: T.zoom_out(ex, rng=rng, prob=1.0),
    "min_iou_crop": lambda ex, rng: T.min_iou_crop(ex, rng=rng),
    "ssd_pipeline": lambda ex, rng: T.ssd_train_transform(ex, 96, rng=rng, augment=NO_COLOR),
    "ssd_pipeline_no_zoom": lambda ex, rng: T.ssd_train_transform(ex, (64, 80), rng=rng, augment=T.SSDAugment(
        photometric_prob=0.0, zoom_out_prob=0.0)),
}


def _match_by_label(out, ex):
  return np.array([int(np.nonzero(ex["labels"] == label)[0][0]) for label in out["labels"]], np.int64)


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
@pytest.mark.parametrize("seed", range(6))
def test_boxes_stay_on_their_pixels_and_map_back(name, seed):
  ex = SOURCE[seed]
  out = GEOMETRIC[name](ex, np.random.default_rng(seed))
  assert out["image"].dtype == np.uint8
  assert_boxes_match_pixels(out["image"], out["boxes"], out["labels"])
  h, w = out["image"].shape[:2]
  assert np.all(out["boxes"] >= 0) and np.all(out["boxes"][:, [0, 2]] <= w) and np.all(out["boxes"][:, [1, 3]] <= h)
  idx = _match_by_label(out, ex)
  back = to_original_frame(out["boxes"], out["frame"])
  original = ex["boxes"][idx]
  # A crop clips boxes: they come back as the part of the original inside the crop.
  assert np.all(back[:, :2] >= original[:, :2] - 1e-3) and np.all(back[:, 2:] <= original[:, 2:] + 1e-3)
  np.testing.assert_array_equal(out["crowd"], ex["crowd"][idx])
  np.testing.assert_array_equal(out["difficult"], ex["difficult"][idx])


@pytest.mark.parametrize("seed", range(5))
def test_zoom_out_copies_the_image_onto_a_mean_canvas(seed):
  ex = SOURCE[seed]
  rng = np.random.default_rng(seed)
  out = T.zoom_out(ex, rng=rng, prob=1.0, max_ratio=4.0)
  h, w = out["image"].shape[:2]
  assert 72 <= h <= 4 * 72 and 96 <= w <= 4 * 96 and abs(h / 72 - w / 96) < 0.03
  sx, sy, tx, ty = out["frame"]
  assert sx == sy == 1 and float(tx).is_integer() and float(ty).is_integer()
  left, top = int(tx), int(ty)
  np.testing.assert_array_equal(out["image"][top:top + 72, left:left + 96], ex["image"])
  outside = np.ones((h, w), bool)
  outside[top:top + 72, left:left + 96] = False
  assert np.all(out["image"][outside] == np.array(geometric.SSD_FILL, np.uint8))
  np.testing.assert_allclose(out["boxes"], ex["boxes"] + [left, top, left, top])
  # prob = 0 returns the example itself but draws as much from the generator.
  a, b = np.random.default_rng(7), np.random.default_rng(7)
  assert T.zoom_out(ex, rng=a, prob=0.0) is ex
  T.zoom_out(ex, rng=b, prob=1.0)
  assert a.bit_generator.state == b.bit_generator.state


def test_crop_keeps_boxes_whose_centre_is_strictly_inside_clipped():
  image = np.arange(100 * 100 * 3, dtype=np.int64).reshape(100, 100, 3).astype(np.uint8)
  boxes = np.array([[10, 10, 30, 30],    # centre (20, 20): inside, clipped on the left
                    [60, 60, 100, 100],  # centre (80, 80): outside, dropped though it overlaps the crop
                    [40, 0, 60, 10],     # centre (50, 5): inside, wholly
                    [5, 40, 25, 50],     # centre (15, 45): on the crop's left edge, dropped
                    [50, 50, 90, 69],    # centre (70, 59.5): on the right edge x = 70, dropped
                    [20, 60, 30, 68]],   # centre (25, 64): inside, touches nothing
                   np.float32)
  ex = make_example(image, boxes, np.arange(6), image_id=1, crowd=np.array([0, 0, 1, 0, 0, 0], bool))
  rect = (15, 0, 70, 70)
  keep = geometric.centers_inside(boxes, rect)
  np.testing.assert_array_equal(keep, [True, False, True, False, False, True])
  out = geometric.crop_example(ex, rect, keep)
  np.testing.assert_array_equal(out["labels"], [0, 2, 5])
  np.testing.assert_array_equal(out["crowd"], [False, True, False])
  np.testing.assert_allclose(out["boxes"], [[0, 10, 15, 30], [25, 0, 45, 10], [5, 60, 15, 68]])
  np.testing.assert_array_equal(out["image"], image[0:70, 15:70])
  np.testing.assert_allclose(to_original_frame(out["boxes"], out["frame"]), [[15, 10, 30, 30], [40, 0, 60, 10],
                                                                             [20, 60, 30, 68]])


class ForcedOption:
  """A generator whose `integers` always picks option `index` of the crop's choices (0 whole image, 1..5 the min
  IoUs 0.1..0.9, 6 no constraint), to test each option's rules; the rest is a real generator."""

  def __init__(self, index, seed):
    self.index, self.rounds, self._rng = index, 0, np.random.default_rng(seed)

  def integers(self, n):
    assert n == 7
    self.rounds += 1
    return self.index

  def uniform(self, *args, **kwargs):
    return self._rng.uniform(*args, **kwargs)


def _iou(boxes, rect):
  lt = np.maximum(boxes[:, :2], rect[:2])
  rb = np.minimum(boxes[:, 2:], rect[2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
  return inter / (np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) + np.prod(rect[2:] - rect[:2]) - inter)


@pytest.mark.parametrize("index,min_iou", [(1, 0.1), (2, 0.3), (3, 0.5), (4, 0.7), (5, 0.9), (6, -np.inf)])
def test_each_min_iou_option_obeys_its_rules(index, min_iou):
  rng = np.random.default_rng(index)
  boxes = np.array([[10, 10, 80, 70], [50, 20, 95, 60], [5, 40, 30, 65]], np.float32)  # large enough for IoU 0.9
  ex = make_example(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8), boxes, [1, 2, 3], image_id=3)
  for seed in range(12):
    out = T.min_iou_crop(ex, rng=ForcedOption(index, seed))
    x1, y1 = -int(out["frame"][2]), -int(out["frame"][3])
    h, w = out["image"].shape[:2]
    rect = np.array([x1, y1, x1 + w, y1 + h], np.float64)
    assert w >= 0.3 * 100 - 1 and h >= 0.3 * 80 - 1 and 0.5 * 0.95 <= h / w <= 2 * 1.05
    assert _iou(boxes, rect).max() >= min_iou
    inside = geometric.centers_inside(boxes, rect)
    assert inside.any()
    np.testing.assert_array_equal(out["labels"], np.array([1, 2, 3])[inside])
    np.testing.assert_allclose(out["boxes"], np.clip(boxes[inside], rect[[0, 1, 0, 1]], rect[[2, 3, 2, 3]])
                               - rect[[0, 1, 0, 1]])
    np.testing.assert_array_equal(out["image"], ex["image"][y1:y1 + h, x1:x1 + w])


def test_whole_image_option_impossible_constraints_and_empty_images():
  ex = make_example(np.zeros((100, 100, 3), np.uint8), [[10, 10, 15, 15], [80, 80, 84, 86]], [0, 1], image_id=1)
  assert T.min_iou_crop(ex, rng=ForcedOption(0, 0)) is ex
  # No crop of at least 30 x 30 reaches IoU 0.1 with a 5 x 5 box: every trial fails, every round, then the whole
  # image is kept.
  forced = ForcedOption(1, 0)
  assert T.min_iou_crop(ex, rng=forced) is ex and forced.rounds == 50
  for seed in range(10):  # a real generator ends up with the whole image or an unconstrained crop
    out = T.min_iou_crop(ex, rng=np.random.default_rng(seed))
    assert out is ex or 1 <= len(out["labels"]) <= 2
  empty = make_example(np.zeros((50, 50, 3), np.uint8), np.zeros((0, 4)), [], image_id=2)
  assert T.min_iou_crop(empty, rng=np.random.default_rng(0)) is empty
  crowd_only = make_example(np.zeros((50, 50, 3), np.uint8), [[0, 0, 50, 50]], [0], image_id=3, crowd=[True])
  assert T.min_iou_crop(crowd_only, rng=np.random.default_rng(0)) is crowd_only


def photometric_reference(image, seed, prob):
  """SSD's distortion pixel by pixel in float64 with colorsys, from the same draws in the same order."""
  rng = np.random.default_rng(seed)
  apply = rng.uniform(size=4) < prob
  contrast_first = rng.uniform() < 0.5
  delta, alpha, saturation, hue = (rng.uniform(-32, 32), rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5),
                                   rng.uniform(-18, 18))
  out = np.empty(image.shape, np.float64)
  for i, j in np.ndindex(image.shape[:2]):
    p = image[i, j].astype(np.float64)
    if apply[0]:
      p = np.clip(p + delta, 0, 255)
    if apply[1] and contrast_first:
      p = np.clip(p * alpha, 0, 255)
    if apply[2] or apply[3]:
      hh, s, v = colorsys.rgb_to_hsv(*p)
      s = min(s * saturation, 1.0) if apply[2] else s
      hh = (hh + hue / 360) % 1.0 if apply[3] else hh
      p = np.array(colorsys.hsv_to_rgb(hh, s, v))
    if apply[1] and not contrast_first:
      p = np.clip(p * alpha, 0, 255)
    out[i, j] = p
  return np.rint(out)


@pytest.mark.parametrize("prob", [1.0, 0.5])
@pytest.mark.parametrize("seed", range(6))
def test_photometric_distortion_matches_the_pixelwise_reference(seed, prob):
  image = np.random.default_rng(100 + seed).integers(0, 256, (9, 13, 3), dtype=np.uint8)
  image[0, :3] = [[0, 0, 0], [255, 255, 255], [128, 128, 128]]  # grey pixels: hue undefined, saturation 0
  ex = make_example(image, [[1, 1, 5, 5]], [0], image_id=1)
  out = T.photometric_distort(ex, rng=np.random.default_rng(seed), prob=prob)
  assert out["image"].dtype == np.uint8
  np.testing.assert_allclose(out["image"], photometric_reference(image, seed, prob), atol=1)
  for key in ("boxes", "labels", "frame"):
    np.testing.assert_array_equal(out[key], ex[key])
  if prob == 1.0:
    assert not np.array_equal(out["image"], image)


def test_hsv_round_trip_and_colorsys_agreement():
  rng = np.random.default_rng(0)
  rgb = rng.uniform(0, 255, (500, 3)).astype(np.float32)
  hsv = rgb_to_hsv(rgb)
  want = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in rgb.astype(np.float64)])
  dh = np.abs(hsv[:, 0] / 360 - want[:, 0])
  assert np.all(np.minimum(dh, 1 - dh) < 1e-5)
  np.testing.assert_allclose(hsv[:, 1:], want[:, 1:] * [1, 255], atol=1e-4)
  np.testing.assert_allclose(hsv_to_rgb(hsv), rgb, atol=1e-3)


def test_loader_ssd_pipeline_is_deterministic_and_keeps_boxes_on_pixels():
  source = painted_source(10, seed=2)
  batches = [next(iter(make_loader(source, batch_size=4, image_size=64, train=True, max_boxes=6, seed=3,
                                   augment=NO_COLOR, shard_index=0, shard_count=1))) for _ in range(2)]
  np.testing.assert_array_equal(batches[0]["image"], batches[1]["image"])
  np.testing.assert_array_equal(batches[0]["boxes"], batches[1]["boxes"])
  batch = batches[0]
  assert batch["image"].shape == (4, 64, 64, 3)
  for i in range(4):
    valid = batch["valid"][i]
    assert valid.any()
    assert_boxes_match_pixels(batch["image"][i], batch["boxes"][i][valid], batch["labels"][i][valid])
  centernet = next(iter(make_loader(source, batch_size=4, image_size=64, train=True, max_boxes=6, seed=3,
                                    shard_index=0, shard_count=1)))
  assert not np.array_equal(centernet["image"], batch["image"])
  with pytest.raises(ValueError, match="Mosaic"):
    make_loader(source, batch_size=4, image_size=64, train=True, augment=NO_COLOR, mosaic_prob=0.5,
                shard_index=0, shard_count=1)


def test_config_names_the_pipeline():
  config = ml_collections.ConfigDict({"data": {"augment": {"flip_prob": 0.25, "scale_range": ()}}})
  assert train_augment(config) == T.Augment(flip_prob=0.25, scale_range=None)
  config.data.pipeline = "ssd"
  config.data.augment = {"zoom_out_prob": 0.0, "crop": False, "min_ious": [0.3, 0.5]}
  assert train_augment(config) == T.SSDAugment(zoom_out_prob=0.0, crop=False, min_ious=(0.3, 0.5))
  config.data.pipeline = "yolo"
  with pytest.raises(ValueError, match="pipeline"):
    train_augment(config)
