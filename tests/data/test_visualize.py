"""draw_boxes outlines each valid box in its class colour with a caption; save_png round-trips."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from jaxdet.data.visualize import class_color, draw_boxes, save_png

BOXES = np.array([[10, 30, 40, 60], [50, 35, 90, 70]], np.float32)


@pytest.mark.parametrize("as_jax", [False, True])
def test_outlines_in_class_colours_and_leaves_the_rest(as_jax):
  image = np.zeros((80, 100, 3), np.uint8)
  wrap = jnp.asarray if as_jax else np.asarray
  out = draw_boxes(wrap(image), wrap(BOXES), labels=wrap(np.array([1, 4])), width=1)
  assert out.dtype == np.uint8 and out.shape == image.shape
  assert not image.any()  # the input is not drawn on
  np.testing.assert_array_equal(out[45, 10], class_color(1))  # left edge of box 0
  np.testing.assert_array_equal(out[59, 25], class_color(1))  # bottom edge (last row inside the box)
  np.testing.assert_array_equal(out[50, 89], class_color(4))  # right edge of box 1
  assert not out[45, 25].any() and not out[50, 70].any()  # interiors untouched
  assert not out[75, :].any()  # nothing below the boxes
  assert class_color(1) != class_color(4) and len({class_color(k) for k in range(20)}) == 20


def test_invalid_slots_are_not_drawn():
  image = np.zeros((80, 100, 3), np.uint8)
  out = draw_boxes(image, BOXES, labels=[1, 4], valid=[True, False])
  assert not out[:, 50:].any()
  assert out[:, :45].any()


def test_caption_shows_name_and_score():
  image = np.zeros((80, 100, 3), np.uint8)
  plain = draw_boxes(image, BOXES[:1], labels=[2])
  named = draw_boxes(image, BOXES[:1], labels=[2], class_names=["a", "b", "cat"], scores=[0.9])
  other = draw_boxes(image, BOXES[:1], labels=[2], class_names=["a", "b", "cat"], scores=[0.1])
  caption = (slice(15, 30), slice(10, 60))  # the caption sits above the box's top edge (y = 30)
  assert named[caption].any() and not np.array_equal(named[caption], plain[caption])
  assert not np.array_equal(named[caption], other[caption])
  np.testing.assert_array_equal(named[31:, :], plain[31:, :])  # only the caption differs


def test_save_png_round_trips(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)
  path = save_png(tmp_path / "sub" / "x.png", image)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), image)


# draw_detections: pictures at a display scale.

from PIL import ImageFont  # noqa: E402

from jaxdet.data import visualize  # noqa: E402
from jaxdet.data.visualize import (MARK_COLOR, PALETTE, display_scale, draw_detections, legend_strip,  # noqa: E402
                                   place_labels, tile)


@pytest.mark.parametrize("kwargs, scale", [({"scale": 8.0}, 8.0), ({}, 512 / 48), ({"min_side": 96}, 2.0)])
def test_draw_detections_puts_box_edges_at_the_display_scale(kwargs, scale):
  image = np.zeros((48, 64, 3), np.uint8)
  box = np.array([10.0, 20.0, 30.0, 40.0])
  out = draw_detections(image, box[None], classes=[3], scores=[0.9], **kwargs)
  assert display_scale(48, 64, **kwargs) == pytest.approx(scale)
  assert out.shape == (round(48 * scale), round(64 * scale), 3)
  x1, y1, x2, y2 = (round(v * scale) for v in box)
  color = class_color(3)
  ym, xm = (y1 + y2) // 2, (x1 + x2) // 2  # the middle of each side: away from the caption, which sits outside
  np.testing.assert_array_equal(out[ym, x1], color)  # left edge: first display column of the box
  np.testing.assert_array_equal(out[ym, x2 - 1], color)  # right edge: last display column inside the box
  np.testing.assert_array_equal(out[y2 - 1, xm], color)  # bottom edge
  for outside in (out[ym, x1 - 1], out[ym, x2], out[y2, xm]):
    assert not outside.any()  # nothing just outside the box
  assert not out[ym, xm].any()  # the interior is untouched
  assert (out[y1 - 1] != 0).any(axis=-1)[x1:x2].any()  # the caption sits just above the top edge


def test_draw_detections_draws_valid_slots_only_and_scales_lines_and_font():
  image = np.zeros((32, 32, 3), np.uint8)
  boxes = np.array([[4, 4, 12, 12], [20, 20, 28, 28]], np.float32)
  out = draw_detections(image, boxes, classes=[0, 1], scores=[0.9, 0.8], valid=[True, False], scale=16)
  assert (out == class_color(0)).all(-1).any() and not (out == class_color(1)).all(-1).any()
  row = (out[160, :] == class_color(0)).all(-1)  # a row through the middle of box 0: its two vertical edges
  assert row[64:67].all() and not row[67]  # lines 3 px wide at a 512 px short side
  big = draw_detections(np.zeros((64, 64, 3), np.uint8), boxes[:1] * 2, classes=[0], scores=[0.9], scale=32)
  caption = (big == class_color(0)).all(-1)[:256 - 1].any(1).sum()  # rows of caption fill above the box
  small = (out == class_color(0)).all(-1)[:64 - 1].any(1).sum()
  assert caption > 1.5 * small  # the font grows with the picture


def test_class_colours_are_the_same_in_every_picture_and_never_the_marking_red():
  a = draw_detections(np.zeros((40, 60, 3), np.uint8), [[5, 5, 30, 30]], classes=[2], scores=[0.5])
  b = draw_detections(np.full((100, 80, 3), 40, np.uint8), [[50, 50, 70, 90]], classes=[2], scores=[0.99])
  for out in (a, b):
    assert (out == class_color(2)).all(-1).sum() > 100
  assert class_color(2) == PALETTE[2] and class_color(len(PALETTE) + 3) == class_color(len(PALETTE) + 3)
  distances = np.abs(np.asarray(PALETTE) - np.asarray(MARK_COLOR)).sum(1)
  assert distances.min() > 120 and len(set(PALETTE)) == len(PALETTE)


def test_ground_truth_dashes_outside_and_misses_in_red():
  image = np.full((64, 64, 3), 128, np.uint8)
  gt = np.array([[8, 8, 24, 24], [40, 40, 56, 56]], np.float32)
  out = draw_detections(image, np.zeros((0, 4)), gt_boxes=gt, gt_labels=[0, 1], missed=[False, True], scale=8)
  left = out[96:160, 62]  # the column just outside box 0's left edge (x = 64)
  assert (left == 255).all(-1).any() and (left == 0).all(-1).any()  # black and white dashes
  assert (out[96:160, 64] == 128).all()  # the box's own pixels stay clear
  red = (out == MARK_COLOR).all(-1)
  assert red[330:430, 315:320].any() and not red[:200, :200].any()  # red dashes only around the missed object


def test_labels_avoid_each_other_on_a_crowded_scene():
  boxes = np.array([[100, 100, 130, 140], [135, 100, 165, 140], [170, 100, 200, 140], [100, 160, 130, 200],
                    [300, 0, 340, 30]], np.float64)
  sizes = np.array([[60, 14]] * 5)
  naive = np.concatenate([boxes[:, :2] - [0, 14], boxes[:, :2] - [0, 14] + sizes], axis=1)

  def overlaps(rects):
    return [(i, j) for i in range(len(rects)) for j in range(i) if
            min(rects[i][2], rects[j][2]) > max(rects[i][0], rects[j][0]) and
            min(rects[i][3], rects[j][3]) > max(rects[i][1], rects[j][1])]

  assert overlaps(naive)  # every label above-left of its box would collide
  placed = place_labels(sizes, boxes, bounds=(400, 300))
  assert not overlaps(placed)
  for rect in placed:  # and none covers any box: there is room for all
    assert not [pair for pair in overlaps(np.concatenate([boxes, rect[None]])) if pair[0] == len(boxes)]
  np.testing.assert_array_equal(placed[4], [300, 30, 360, 44])  # at the top border: below the box, not clipped
  np.testing.assert_array_equal(placed[:, 2:] - placed[:, :2], sizes)


@given(st.lists(st.tuples(st.integers(0, 90), st.integers(0, 90), st.integers(1, 40), st.integers(1, 40),
                          st.integers(5, 50), st.integers(5, 20)), min_size=1, max_size=12))
def test_labels_stay_inside_the_picture(spec):
  spec = np.asarray(spec, np.float64)
  boxes = np.stack([spec[:, 0], spec[:, 1], spec[:, 0] + spec[:, 2], spec[:, 1] + spec[:, 3]], 1)
  placed = place_labels(spec[:, 4:], boxes, bounds=(130, 130))
  assert (placed[:, :2] >= 0).all() and (placed[:, 2:] <= 130).all()


def test_font_falls_back_to_the_bitmap_font_on_an_old_pillow(monkeypatch):
  original = ImageFont.load_default

  def old_load_default(*args, **kwargs):  # Pillow < 10.1 takes no size
    if args or kwargs:
      raise TypeError("load_default() got an unexpected keyword argument 'size'")
    return original()

  visualize.load_font.cache_clear()
  monkeypatch.setattr(ImageFont, "load_default", old_load_default)
  try:
    out = draw_detections(np.zeros((32, 32, 3), np.uint8), [[4, 4, 20, 20]], classes=[1], scores=[0.7])
    assert out.shape == (512, 512, 3) and (out == class_color(1)).all(-1).any()
  finally:
    visualize.load_font.cache_clear()


def test_legend_strip_wraps_and_rejects_unknown_kinds():
  entries = [("box", (200, 200, 200), "detection"), ("dashed", None, "ground truth"), ("cross", None, "false"),
             ("missed", None, "missed"), ("fill", (0, 153, 255), "ellipse")]
  one = legend_strip(2000, title="t", entries=entries)
  wrapped = legend_strip(160, title="t", entries=entries)
  assert one.shape[1] == 2000 and wrapped.shape[1] == 160 and wrapped.shape[0] > one.shape[0]
  assert (one == MARK_COLOR).all(-1).any() and (one == (0, 153, 255)).all(-1).any()
  with pytest.raises(ValueError, match="kind"):
    legend_strip(100, title="t", entries=[("star", None, "x")])


def test_tile_lays_out_images_of_any_size_row_by_row():
  images = [np.full((h, w, 3), v, np.uint8) for v, (h, w) in enumerate([(10, 20), (30, 5), (7, 7)], start=1)]
  out = tile(images, columns=2, gap=1)
  assert out.shape == (1 + 30 + 1 + 7 + 1, 1 + 20 + 1 + 5 + 1, 3)
  assert (out[1:11, 1:21] == 1).all() and (out[1:31, 22:27] == 2).all() and (out[32:39, 1:8] == 3).all()


def test_many_labels_on_one_small_box_stack_instead_of_overlapping():
  boxes = np.array([[200, 150, 215, 160]] * 6, np.float64)  # six detections of one small object
  placed = place_labels(np.array([[70, 14]] * 6), boxes, bounds=(400, 300))
  for i in range(6):
    for j in range(i):
      a, b = placed[i], placed[j]
      assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (i, j)
  assert (np.abs(placed[:, 1] - 150) <= 4 * 14 + 10).all()  # all within a few rows of the box
