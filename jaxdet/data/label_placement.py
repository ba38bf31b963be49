"""Where to put the captions of boxes in a picture so that they cover neither each other nor the boxes."""

from __future__ import annotations

import numpy as np


def _interval_overlap(a1, a2, b1, b2):
  return np.maximum(0, np.minimum(a2, b2) - np.maximum(a1, b1))


def _overlap_area(rect: np.ndarray, rects: np.ndarray) -> np.ndarray:
  """Area shared by one rectangle `[4]` and each of `rects [N, 4]` (x1, y1, x2, y2, half-open)."""
  if len(rects) == 0:
    return np.zeros((0,))
  return (_interval_overlap(rect[0], rect[2], rects[:, 0], rects[:, 2]) *
          _interval_overlap(rect[1], rect[3], rects[:, 1], rects[:, 3]))


def place_labels(sizes, boxes, *, bounds: tuple[int, int], obstacles=None) -> np.ndarray:
  """Returns `[N, 4]` label rectangles (x1, y1, x2, y2) next to `boxes`, avoiding each other and the boxes.

  `sizes [N, 2]` (width, height) of each label; `boxes [N, 4]` xyxy of the box each label names, in priority order
  (the first choose first: pass detections by descending score); `bounds` (width, height) of the picture, which
  every label stays inside; `obstacles [M, 4]` further boxes not to cover (e.g. ground truth).

  Each label tries, in this order, above-left, below-left, above-right and below-right of its box (outside it),
  inside at the top-left and bottom-left, then stacked one to three label heights further above or below (for a
  small box with many detections), and takes the first position of least cost: a label over an already placed
  label costs 1000 per shared pixel, a label over any box (its own included) 1 per pixel, each row of stacking a
  quarter of the label's area. So labels overlap one another only when every position would, and cover boxes
  only when no free position is near. Greedy, not optimal: an earlier label never moves to make room for a later one.
  """
  sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  extra = np.zeros((0, 4)) if obstacles is None else np.asarray(obstacles, np.float64).reshape(-1, 4)
  avoid = np.concatenate([boxes, extra])
  width, height = bounds
  placed = np.zeros((len(boxes), 4))
  for i, ((w, h), (x1, y1, x2, y2)) in enumerate(zip(sizes, boxes)):
    corners = [(x1, y1 - h, 0), (x1, y2, 0), (x2 - w, y1 - h, 0), (x2 - w, y2, 0), (x1, y1, 0), (x1, y2 - h, 0)]
    corners += [c for k in (1, 2, 3) for c in ((x1, y1 - h * (k + 1), k), (x1, y2 + h * k, k))]
    best, best_cost = None, np.inf
    for cx, cy, rows in corners:
      cx = min(max(cx, 0.0), max(0.0, width - w))
      cy = min(max(cy, 0.0), max(0.0, height - h))
      rect = np.array([cx, cy, cx + w, cy + h])
      cost = (1000.0 * _overlap_area(rect, placed[:i]).sum() + _overlap_area(rect, avoid).sum() +
              0.25 * w * h * rows)
      if cost < best_cost:
        best, best_cost = rect, cost
    placed[i] = best
  return placed
