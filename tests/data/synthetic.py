"""Generated detection examples whose boxes are painted on the image, and the check that pixels and boxes agree.

Box k of an example is a filled rectangle of colour `PALETTE[label_k]` on a black background, labels unique per
image, so after any geometric transform the pixels of that colour must still lie in (and fill) the box with that
label. Palette colours all have a 255 component: blends with the background or with another box at an edge
never look like a different palette colour.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from jaxdet.data.source import Example, ListSource, make_example

PALETTE = np.array([c for c in itertools.product((0, 128, 255), repeat=3) if 255 in c], np.uint8)  # 19 colours
NUM_COLORS = len(PALETTE)


def painted_example(rng: np.random.Generator, *, height: int, width: int, colors: Sequence[int], image_id: int,
                    grid: int = 3, margin: int = 4, min_side: int = 4) -> Example:
  """Returns an example with one painted box per entry of `colors` (palette indices, used as labels).

  Boxes have whole-pixel corners and sit in distinct cells of a `grid x grid` layout, `margin` pixels from the
  cell edges, so they never touch. `crowd` and `difficult` are random, to check they travel with their boxes.
  """
  colors = list(colors)
  cells = rng.choice(grid * grid, size=len(colors), replace=False)
  image = np.zeros((height, width, 3), np.uint8)
  boxes = []
  ch, cw = height // grid, width // grid
  for cell, color in zip(cells, colors):
    r, c = divmod(int(cell), grid)
    x_lo, y_lo = c * cw + margin, r * ch + margin
    x_hi, y_hi = (c + 1) * cw - margin, (r + 1) * ch - margin
    x1 = int(rng.integers(x_lo, x_hi - min_side + 1))
    y1 = int(rng.integers(y_lo, y_hi - min_side + 1))
    x2 = int(rng.integers(x1 + min_side, x_hi + 1))
    y2 = int(rng.integers(y1 + min_side, y_hi + 1))
    image[y1:y2, x1:x2] = PALETTE[color]
    boxes.append((x1, y1, x2, y2))
  n = len(colors)
  return make_example(image, np.array(boxes, np.float32).reshape(n, 4), np.array(colors, np.int32),
                      image_id=image_id, crowd=rng.uniform(size=n) < 0.3, difficult=rng.uniform(size=n) < 0.3)


def painted_source(num_examples: int, *, seed: int = 0, height: int = 72, width: int = 96,
                   boxes_per_image: int = 5, first_id: int = 100) -> ListSource:
  """Returns a `ListSource` of painted examples with ids `first_id + i` and random palette colours."""
  rng = np.random.default_rng(seed)
  examples = [painted_example(rng, height=height, width=width, image_id=first_id + i,
                              colors=rng.choice(NUM_COLORS, size=boxes_per_image, replace=False))
              for i in range(num_examples)]
  return ListSource(examples, [f"color{k}" for k in range(NUM_COLORS)])


def color_mask(image: np.ndarray, color: int, *, tol: int = 40) -> np.ndarray:
  """bool `[H, W]`: pixels within `tol` (per channel) of palette colour `color`."""
  return np.all(np.abs(image.astype(np.int16) - PALETTE[color].astype(np.int16)) <= tol, axis=-1)


def assert_boxes_match_pixels(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, *,
                              inside_tol: float = 1.0, tight_tol: float = 1.5, min_side: float = 4.0) -> None:
  """Fails unless each box's colour lies inside it (up to `inside_tol` px) and, when it is at least `min_side`
  pixels on both sides, its colour's pixels span it to `tight_tol` px. Pixel (i, j) covers [j, j+1) x [i, i+1).
  """
  for box, label in zip(np.asarray(boxes, np.float64), np.asarray(labels)):
    ys, xs = np.nonzero(color_mask(image, int(label)))
    x1, y1, x2, y2 = box
    assert x2 > x1 and y2 > y1, f"degenerate box kept: {box}"
    if len(xs) == 0:
      assert min(x2 - x1, y2 - y1) < min_side, f"box {box} (label {label}) has no pixels of its colour"
      continue
    assert xs.min() + 1 > x1 - inside_tol and xs.max() < x2 + inside_tol, (box, xs.min(), xs.max())
    assert ys.min() + 1 > y1 - inside_tol and ys.max() < y2 + inside_tol, (box, ys.min(), ys.max())
    if min(x2 - x1, y2 - y1) >= min_side:
      got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
      assert np.all(np.abs(got - box) <= tight_tol), f"label {label}: box {box} but its pixels span {got}"
