"""Device augmentation equals the host transforms for the same parameters, keeps boxes on their pixels, and draws
per example from the stream position alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.data import device_augment as D
from jaxdet.data import geometric, transforms as T
from jaxdet.data.loader import collate
from jaxdet.data.photometric import adjust_color
from jaxdet.data.source import make_example, to_original_frame
from tests.data.synthetic import assert_boxes_match_pixels, painted_source

SOURCE = painted_source(6, seed=3, height=72, width=96)
MAX_BOXES = 8
NO_COLOR = dict(brightness=0.0, contrast=0.0, saturation=0.0, lighting=0.0)


def padded(example, max_boxes=MAX_BOXES):
  """The example as one row of a collated batch (padded box fields + valid), as JAX arrays."""
  batch = collate([dict(example, example_valid=np.bool_(True))], max_boxes=max_boxes)
  return {k: jnp.asarray(batch[k][0]) for k in ("image", *D.BOX_FIELDS, "frame")}


def valid_part(example):
  """NumPy boxes, labels, crowd, difficult of the valid slots (which `compact_boxes` puts first)."""
  n = int(np.sum(example["valid"]))
  assert np.all(np.asarray(example["valid"])[:n]) and not np.any(np.asarray(example["valid"])[n:])
  return {k: np.asarray(example[k])[:n] for k in ("boxes", "labels", "crowd", "difficult")}


def assert_pixels_close(got, want, *, exact=False):
  """Equal where the filter taps are exact binary fractions; else a level or two at rounding ties.

  PIL breaks a .5 tie by the float noise of its float32 source box and 22-bit fixed-point taps, the device by
  float32's; each of the two passes can land a tie on the other side. A misplaced tap would move noise images by
  tens of levels.
  """
  diff = np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16))
  if exact:
    assert diff.max() == 0, (diff.max(), np.mean(diff > 0))
  assert diff.max() <= 2, diff.max()
  assert diff.mean() < 0.2, diff.mean()


WARPS = {  # (size (h, w), scale (sx, sy), offset (tx, ty), taps exact in binary)
    "shift_whole_pixels": ((72, 96), (1.0, 1.0), (-7.0, 5.0), True),
    "shift_quarter_pixels": ((64, 80), (1.0, 1.0), (-10.25, 3.5), True),
    "enlarge_2x": ((96, 128), (2.0, 2.0), (-20.5, -12.0), True),
    "shrink_half_and_quarter": ((40, 48), (0.25, 0.5), (3.0, 2.5), True),
    "shift_fractional": ((64, 80), (1.0, 1.0), (-10.3, 3.6), False),
    "enlarge": ((96, 128), (1.55, 1.55), (-20.4, -12.2), False),
    "shrink_antialiased": ((64, 64), (0.62, 0.62), (3.3, 9.7), False),
    "shrink_strongly_anisotropic": ((40, 90), (0.9, 0.41), (1.0, 2.5), False),
    "letterbox_wide": ((64, 160), *D.letterbox_params((72, 96), (64, 160)), False),
}


@pytest.mark.parametrize("name", sorted(WARPS))
@pytest.mark.parametrize("index", [0, 2])  # painted, noise
def test_warp_equals_the_host_warp(name, index):
  size, scale, offset, exact = WARPS[name]
  ex = SOURCE[index]
  ex = dict(ex, image=np.random.default_rng(index).integers(0, 256, ex["image"].shape, dtype=np.uint8)
            if index == 2 else ex["image"])  # noise as well as flat paint
  host = geometric.warp_example(ex, size=size, scale=scale, offset=offset, fill=114)
  dev = jax.jit(lambda e: D.compact_boxes(D.warp_example(e, size=size, scale=scale, offset=offset, fill=114,
                                                          min_size=geometric.MIN_SIZE,
                                                          min_visible=geometric.MIN_VISIBLE)))(padded(ex))
  assert dev["image"].dtype == jnp.uint8 and dev["image"].shape == (*size, 3)
  assert_pixels_close(dev["image"], host["image"], exact=exact)
  got = valid_part(dev)
  for key in ("labels", "crowd", "difficult"):
    np.testing.assert_array_equal(got[key], host[key])
  np.testing.assert_allclose(got["boxes"], host["boxes"], atol=1e-4)
  np.testing.assert_allclose(dev["frame"], host["frame"], rtol=1e-6, atol=1e-4)


def test_traced_scale_and_offset_give_the_static_result():
  size, scale, offset, _ = WARPS["shrink_antialiased"]
  ex = padded(SOURCE[0])
  warp = functools.partial(D.warp_image, size=size, fill=114)
  static = warp(ex["image"], scale=scale, offset=offset)
  traced = jax.jit(lambda im, s, t: warp(im, scale=(s, s), offset=(t[0], t[1])))(ex["image"], scale[0],
                                                                                  jnp.array(offset))
  np.testing.assert_array_equal(static, traced)


def test_flip_equals_the_host_flip_and_no_flip_is_the_identity():
  ex = SOURCE[1]
  host = geometric.hflip(ex)
  dev = D.flip_example(padded(ex), jnp.bool_(True))
  np.testing.assert_array_equal(dev["image"], host["image"])
  got = valid_part(D.compact_boxes(dev))
  np.testing.assert_allclose(got["boxes"], host["boxes"], atol=1e-5)
  np.testing.assert_allclose(dev["frame"], host["frame"], atol=1e-6)
  same = D.flip_example(padded(ex), jnp.bool_(False))
  for key, value in padded(ex).items():
    np.testing.assert_array_equal(same[key], value)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_colour_jitter_equals_the_host_colour_matrix(order):
  names = ("brightness", "contrast", "saturation")
  image = np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)
  factors, alpha = np.array([1.3, 0.7, 1.25]), np.array([0.08, -0.05, 0.12])
  host = adjust_color(image, brightness=factors[0], contrast=factors[1], saturation=factors[2],
                      order=[names[i] for i in order], lighting=alpha)
  dev = jax.jit(D.adjust_color)(jnp.asarray(image), factors=jnp.asarray(factors, jnp.float32),
                                order=jnp.asarray(order), lighting=jnp.asarray(alpha, jnp.float32))
  assert_pixels_close(dev, host)


@pytest.mark.parametrize("scale_range", [None, (0.6, 1.3)])
@pytest.mark.parametrize("size", [96, (56, 72)])
def test_augmented_boxes_stay_on_their_pixels_and_map_back(scale_range, size):
  augment = T.Augment(scale_range=scale_range, **NO_COLOR)
  fn = jax.jit(lambda e, k: D.augment_example(e, k, size=size, augment=augment))
  flips = 0
  for index in range(len(SOURCE)):
    ex = SOURCE[index]
    for seed in range(3):
      out = {k: np.asarray(v) for k, v in fn(padded(ex), jax.random.PRNGKey(10 * index + seed)).items()}
      got = valid_part(out)
      assert_boxes_match_pixels(out["image"], got["boxes"], got["labels"])
      h, w = out["image"].shape[:2]
      assert np.all(got["boxes"] >= 0) and np.all(got["boxes"][:, [0, 2]] <= w) and np.all(got["boxes"][:, [1, 3]] <= h)
      idx = np.array([int(np.nonzero(ex["labels"] == label)[0][0]) for label in got["labels"]], np.int64)
      np.testing.assert_array_equal(got["crowd"], ex["crowd"][idx])
      back = to_original_frame(got["boxes"], out["frame"])
      inner = np.all((got["boxes"][:, :2] > 0.01) & (got["boxes"][:, 2:] < np.array([w, h]) - 0.01), axis=1)
      np.testing.assert_allclose(back[inner], ex["boxes"][idx][inner], atol=2e-3)
      flips += out["frame"][0] < 0
  assert 0 < flips < 3 * len(SOURCE)


def test_scale_and_crop_draws_follow_the_host_distribution():
  augment = T.Augment(scale_range=(0.6, 1.3), **NO_COLOR)
  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  k, (tx, ty) = jax.vmap(lambda key: D.draw_scale_crop(key, source_hw=(72, 96), size=(64, 80),
                                                       scale_range=augment.scale_range))(keys)
  k, tx, ty = np.asarray(k), np.asarray(tx), np.asarray(ty)
  r = 80 / (k * 96)
  assert r.min() >= 0.6 - 1e-5 and r.max() <= 1.3 + 1e-5 and r.min() < 0.65 and r.max() > 1.25
  x0, y0 = -tx / k, -ty / k
  cw, ch = 80 / k, 64 / k
  assert np.all(x0 >= np.minimum(0, 96 - cw) - 1e-3) and np.all(x0 <= np.maximum(0, 96 - cw) + 1e-3)
  assert np.all(y0 >= np.minimum(0, 72 - ch) - 1e-3) and np.all(y0 <= np.maximum(0, 72 - ch) + 1e-3)


def test_a_same_size_letterbox_keeps_the_image_and_applies_the_box_rule():
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  ex = make_example(image, [[2, 2, 12, 12], [5, 5, 5.5, 20], [20, 20, 40, 30]], [1, 2, 3], image_id=1)
  augment = T.Augment(flip_prob=0.0, scale_range=None, **NO_COLOR)
  out = D.augment_example(padded(ex), jax.random.PRNGKey(0), size=32, augment=augment)
  host = T.letterbox(ex, 32)
  np.testing.assert_array_equal(out["image"], image)
  np.testing.assert_array_equal(valid_part(out)["labels"], host["labels"])  # the 0.5-wide box is dropped
  np.testing.assert_allclose(valid_part(out)["boxes"], host["boxes"])


def batch_of(indices, positions):
  batch = collate([dict(SOURCE[i], example_valid=np.bool_(True)) for i in indices], max_boxes=MAX_BOXES)
  batch = {k: jnp.asarray(batch[k]) for k in ("image", *D.BOX_FIELDS, "frame", "image_id")}
  return dict(batch, position=jnp.asarray(positions, jnp.int32))


def test_each_example_draws_from_its_position_only():
  augment = T.Augment(scale_range=(0.6, 1.3))
  fn = jax.jit(functools.partial(D.augment_batch, seed=5, size=64, augment=augment))
  a = fn(batch_of([0, 1, 2, 3], [10, 11, 12, 13]))
  b = fn(batch_of([2, 0], [12, 10]))  # other batch, other order, other rows: same views of the same examples
  for key in ("image", "boxes", "valid", "labels", "frame"):
    np.testing.assert_array_equal(b[key][0], a[key][2])
    np.testing.assert_array_equal(b[key][1], a[key][0])
  np.testing.assert_array_equal(a["image_id"], batch_of([0, 1, 2, 3], [0] * 4)["image_id"])  # passed through
  c = fn(batch_of([0], [99]))
  assert not np.array_equal(c["image"][0], a["image"][0])  # another position, another view
  d = jax.jit(functools.partial(D.augment_batch, seed=6, size=64, augment=augment))(batch_of([0], [10]))
  assert not np.array_equal(d["image"][0], a["image"][0])  # another seed, another view


def test_unsupported_options_are_refused_by_name():
  batch = batch_of([0], [0])
  with pytest.raises(ValueError, match="hue"):
    D.augment_batch(batch, seed=0, size=64, augment=T.Augment(hue=0.1))
  with pytest.raises(ValueError, match="SSDAugment"):
    D.augment_batch(batch, seed=0, size=64, augment=T.SSDAugment())
  with pytest.raises(ValueError, match="proposals"):
    D.augment_batch(dict(batch, proposals=jnp.zeros((1, 4, 4))), seed=0, size=64)
  with pytest.raises(ValueError, match="position"):
    D.augment_batch({k: v for k, v in batch.items() if k != "position"}, seed=0, size=64)
