"""Transforms keep boxes on their pixels, drop boxes that leave the image, and record a frame that maps back."""

from __future__ import annotations

import itertools

import chex
import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.data import geometric, transforms as T
from jaxdet.data.photometric import adjust_color, adjust_hue
from jaxdet.data.source import make_example, to_original_frame
from tests.data.synthetic import assert_boxes_match_pixels, painted_example, painted_source

SOURCE = painted_source(6, seed=3, height=72, width=96)

GEOMETRIC = {
    "resize_up_anisotropic": lambda ex, rng: T.resize(ex, (150, 130)),
    "resize_down": lambda ex, rng: T.resize(ex, (48, 60)),
    "letterbox_wide": lambda ex, rng: T.letterbox(ex, (64, 160)),
    "letterbox_square": lambda ex, rng: T.letterbox(ex, 128),
    "hflip": lambda ex, rng: T.hflip(ex),
    "random_flip": lambda ex, rng: T.random_flip(ex, rng=rng),
    "scale_crop_square": lambda ex, rng: T.random_scale_crop(ex, 96, rng=rng),
    "scale_crop_small": lambda ex, rng: T.random_scale_crop(ex, (56, 72), rng=rng),
    "train_no_color": lambda ex, rng: T.train_transform(ex, 80, rng=rng, augment=T.Augment(
        brightness=0, contrast=0, saturation=0, lighting=0)),
}


def _match_by_label(out, ex):
  """Index into `ex` of each box of `out` (labels are unique within a painted example)."""
  return np.array([int(np.nonzero(ex["labels"] == label)[0][0]) for label in out["labels"]], np.int64)


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
@pytest.mark.parametrize("seed", range(4))
def test_boxes_stay_on_their_pixels(name, seed):
  ex = SOURCE[seed]
  out = GEOMETRIC[name](ex, np.random.default_rng(seed))
  assert out["image"].dtype == np.uint8
  assert_boxes_match_pixels(out["image"], out["boxes"], out["labels"])
  h, w = out["image"].shape[:2]
  assert np.all(out["boxes"] >= 0) and np.all(out["boxes"][:, [0, 2]] <= w) and np.all(out["boxes"][:, [1, 3]] <= h)


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
@pytest.mark.parametrize("seed", range(4))
def test_frame_maps_boxes_back_to_stored_pixels(name, seed):
  ex = SOURCE[seed]
  out = GEOMETRIC[name](ex, np.random.default_rng(seed))
  idx = _match_by_label(out, ex)
  back = to_original_frame(out["boxes"], out["frame"])
  original = ex["boxes"][idx]
  # Boxes clipped by the output window come back as the visible part of the original: inside it.
  assert np.all(back[:, :2] >= original[:, :2] - 1e-3) and np.all(back[:, 2:] <= original[:, 2:] + 1e-3)
  h, w = out["image"].shape[:2]
  inner = np.all((out["boxes"][:, :2] > 0.01) & (out["boxes"][:, 2:] < np.array([w, h]) - 0.01), axis=1)
  np.testing.assert_allclose(back[inner], original[inner], atol=1e-3)
  # Per-box fields travel with their box.
  np.testing.assert_array_equal(out["crowd"], ex["crowd"][idx])
  np.testing.assert_array_equal(out["difficult"], ex["difficult"][idx])


@hypothesis.given(h=st.integers(8, 80), w=st.integers(8, 80), flip=st.booleans(), mode=st.sampled_from(
    ["resize", "letterbox"]), seed=st.integers(0, 2**16))
def test_chained_transforms_compose_their_frames(h, w, flip, mode, seed):
  rng = np.random.default_rng(seed)
  ex = painted_example(rng, height=60, width=45, colors=[0, 5, 9], image_id=1, grid=3, margin=2, min_side=3)
  out = T.letterbox(ex, (h, w)) if mode == "letterbox" else T.resize(ex, (h, w))
  out = T.hflip(out) if flip else out
  out = T.resize(out, (37, 53))
  keep = _match_by_label(out, ex)
  np.testing.assert_allclose(to_original_frame(out["boxes"], out["frame"]), ex["boxes"][keep], atol=2e-3)


@hypothesis.given(h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_hflip_is_an_involution(h, w, seed):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  xy = rng.uniform(0, [w, h], (5, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(0, 10, (5, 2))], axis=1)
  ex = make_example(image, boxes, np.arange(5), image_id=7)
  twice = T.hflip(T.hflip(ex))
  np.testing.assert_array_equal(twice["image"], ex["image"])
  np.testing.assert_allclose(twice["boxes"], ex["boxes"], atol=1e-5)
  np.testing.assert_allclose(twice["frame"], ex["frame"], atol=1e-6)
  once = T.hflip(ex)
  np.testing.assert_array_equal(once["image"], image[:, ::-1])
  np.testing.assert_allclose(once["boxes"][:, [0, 2]], w - ex["boxes"][:, [2, 0]], atol=1e-5)


def _keep_rule(boxes, *, scale, offset, window, hw, min_size, min_visible):
  """Reference transcription of the box rule, box by box."""
  kept = []
  for x1, y1, x2, y2 in boxes:
    x1, x2 = np.clip([x1, x2], 0, hw[1]) * scale[0] + offset[0]
    y1, y2 = np.clip([y1, y2], 0, hw[0]) * scale[1] + offset[1]
    cx1, cx2 = np.clip([x1, x2], window[0], window[2])
    cy1, cy2 = np.clip([y1, y2], window[1], window[3])
    cw, ch = cx2 - cx1, cy2 - cy1
    kept.append(bool(cw >= min_size and ch >= min_size and cw * ch >= min_visible * (x2 - x1) * (y2 - y1)))
  return np.array(kept)


@pytest.mark.parametrize("min_visible", [0.0, 0.25, 0.6])
@pytest.mark.parametrize("offset", [(-30.0, 0.0), (-50.0, -20.0), (10.0, 12.0)])
def test_boxes_leaving_the_output_are_dropped_with_their_fields(min_visible, offset):
  image = np.zeros((60, 80, 3), np.uint8)
  boxes = np.array([[0, 0, 20, 20], [25, 5, 40, 30], [30, 30, 70, 50], [60, 40, 80, 60], [5, 45, 8, 47],
                    [10, 10, 10, 30], [79.5, 0, 80, 10]], np.float32)
  ex = make_example(image, boxes, np.arange(7) * 10, image_id=1, crowd=np.arange(7) % 2 == 0,
                    difficult=np.arange(7) % 3 == 0)
  out = geometric.warp_example(ex, size=(40, 40), scale=(1.0, 1.0), offset=offset, min_visible=min_visible)
  want = _keep_rule(boxes, scale=(1, 1), offset=offset, window=(0, 0, 40, 40), hw=(60, 80), min_size=1.0,
                    min_visible=min_visible)
  np.testing.assert_array_equal(out["labels"], ex["labels"][want])
  np.testing.assert_array_equal(out["crowd"], ex["crowd"][want])
  np.testing.assert_array_equal(out["difficult"], ex["difficult"][want])
  assert 10 * 5 not in out["labels"].tolist()  # a zero-width box never survives
  assert 0 < want.sum() < 7


def test_degenerate_and_nan_boxes_are_dropped_not_crashed_on():
  ex = make_example(np.zeros((20, 20, 3), np.uint8),
                    [[1, 1, 1, 9], [2, 2, 10, 10], [np.nan, 0, 5, 5], [5, 5, 3, 3], [0, 0, np.inf, 4]], np.arange(5),
                    image_id=1)
  outs = [T.resize(ex, 40), T.letterbox(ex, (10, 30)), T.random_scale_crop(ex, 32, rng=np.random.default_rng(0))]
  for out in outs:
    assert np.all(np.isfinite(out["boxes"]))
    assert not {0, 2, 3} & set(out["labels"].tolist())
  assert [o["labels"].tolist() for o in outs[:2]] == [[1, 4], [1, 4]]


@pytest.mark.parametrize("size", [(64, 160), (160, 64), (96, 96)])
def test_letterbox_keeps_aspect_and_pads_centred_with_fill(size):
  ex = SOURCE[0]  # 72 x 96
  out = T.letterbox(ex, size, fill=7)
  sx, sy, tx, ty = out["frame"]
  assert abs(sx * 96 - round(sx * 96)) < 1e-3 and abs(sx / sy - 1) < 2 / 72
  nh, nw = round(72 * sy), round(96 * sx)
  assert nh == size[0] or nw == size[1]
  assert tx == (size[1] - nw) // 2 and ty == (size[0] - nh) // 2
  mask = np.ones(size, bool)
  mask[int(ty):int(ty) + nh, int(tx):int(tx) + nw] = False
  assert np.all(out["image"][mask] == 7)


@pytest.mark.parametrize("seed", range(8))
def test_random_scale_crop_draws_scale_in_range(seed):
  ex = SOURCE[1]
  out = T.random_scale_crop(ex, (64, 80), rng=np.random.default_rng(seed), scale_range=(0.6, 1.3))
  k = out["frame"][0]
  assert 80 / (1.3 * 96) - 1e-5 <= k <= 80 / (0.6 * 96) + 1e-5
  assert out["image"].shape == (64, 80, 3)
  again = T.random_scale_crop(ex, (64, 80), rng=np.random.default_rng(seed), scale_range=(0.6, 1.3))
  np.testing.assert_array_equal(again["image"], out["image"])


def test_color_jitter_changes_pixels_only_and_is_seeded():
  ex = SOURCE[2]
  out = T.color_jitter(ex, rng=np.random.default_rng(0), hue=0.1)
  assert out["image"].dtype == np.uint8 and out["image"].shape == ex["image"].shape
  assert not np.array_equal(out["image"], ex["image"])
  for key in ("boxes", "labels", "crowd", "difficult", "frame"):
    np.testing.assert_array_equal(out[key], ex[key])
  again = T.color_jitter(ex, rng=np.random.default_rng(0), hue=0.1)
  np.testing.assert_array_equal(again["image"], out["image"])
  off = T.color_jitter(ex, rng=np.random.default_rng(0), brightness=0, contrast=0, saturation=0, lighting=0)
  np.testing.assert_array_equal(off["image"], ex["image"])


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_color_blends_match_their_formulas(factor):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
  x = image.astype(np.float64)
  gray = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114

  def ref(y):
    return np.clip(np.rint(y), 0, 255)

  np.testing.assert_allclose(adjust_color(image, brightness=factor), ref(x * factor), atol=1)
  np.testing.assert_allclose(adjust_color(image, contrast=factor), ref(x * factor + gray.mean() * (1 - factor)),
                             atol=1)
  np.testing.assert_allclose(adjust_color(image, saturation=factor),
                             ref(x * factor + gray[..., None] * (1 - factor)), atol=1)
  grey = adjust_color(image, saturation=0.0)
  assert np.all(np.ptp(grey.astype(int), axis=-1) <= 1)


def _color_chain_reference(image, factors, order, alpha):
  """CenterNet's blends applied one after the other in float64, then lighting, then one rounding."""
  x = image.astype(np.float64)
  for name in order:
    a = factors[name]
    gray = x @ [0.299, 0.587, 0.114]
    if name == "brightness":
      x = x * a
    elif name == "contrast":
      x = x * a + gray.mean() * (1 - a)
    else:
      x = x * a + gray[..., None] * (1 - a)
  eigval = np.array([0.2175, 0.0188, 0.0045])
  eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
  return np.clip(np.rint(x + 255 * eigvec @ (eigval * np.asarray(alpha))), 0, 255)


@pytest.mark.parametrize("order", list(itertools.permutations(["brightness", "contrast", "saturation"])))
def test_composed_color_chain_equals_the_step_by_step_reference(order):
  rng = np.random.default_rng(len(order[0]) * 7 + len(order[1]))
  image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
  factors = dict(zip(["brightness", "contrast", "saturation"], rng.uniform(0.6, 1.4, 3)))
  alpha = rng.normal(0, 0.5, 3)
  got = adjust_color(image, order=order, lighting=alpha, **factors)
  np.testing.assert_allclose(got, _color_chain_reference(image, factors, order, alpha), atol=1)


@pytest.mark.parametrize("delta, channel", [(1 / 3, 1), (2 / 3, 2), (1.0, 0)])
def test_hue_rotation_moves_red_round_the_colour_wheel(delta, channel):
  red = np.zeros((4, 4, 3), np.uint8)
  red[..., 0] = 255
  out = adjust_hue(red, delta).astype(int)
  assert np.all(out[..., channel] > 240) and np.all(np.delete(out, channel, axis=-1) < 15)


class NormalizeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_numpy_and_jax_agree(self):
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    want = (images.astype(np.float64) - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD)
    on_host = T.normalize_image(images)
    assert isinstance(on_host, np.ndarray) and on_host.dtype == np.float32
    on_device = self.variant(T.normalize_image)(jnp.asarray(images))
    chex.assert_shape(on_device, (2, 5, 7, 3))
    np.testing.assert_allclose(on_host, want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(on_device), on_host, atol=1e-6)
    half = self.variant(lambda x: T.normalize_image(x, (0, 0, 0), (255, 255, 255), dtype=jnp.bfloat16))(
        jnp.asarray(images))
    assert half.dtype == jnp.bfloat16


def test_eval_transform_modes():
  ex = SOURCE[4]
  a = T.eval_transform(ex, (48, 48), mode="letterbox")
  b = T.eval_transform(ex, (48, 48), mode="resize")
  assert a["image"].shape == b["image"].shape == (48, 48, 3)
  assert len(a["boxes"]) == len(b["boxes"]) == len(ex["boxes"])  # evaluation never drops a box
  with pytest.raises(ValueError):
    T.eval_transform(ex, 48, mode="crop")
