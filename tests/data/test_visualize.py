"""draw_boxes outlines each valid box in its class colour with a caption; save_png round-trips."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
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
