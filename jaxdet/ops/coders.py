"""Box coders: how each detector family writes a box relative to an anchor, a cell or a location.

Each `encode_*` has a `decode_*` inverse. All geometry is float32, xyxy pixels, continuous (no "+1").
Encoders give zero targets (and cell (0, 0)) with a zero gradient for a degenerate box (`is_valid_box` False: empty,
inverted, NaN or inf) — it is padding or noise that the caller's `valid` mask drops; decoders are finite for finite
network outputs and any anchor or location (a non-finite anchor decodes as the empty box at the origin).

- Faster R-CNN (R-CNN appendix C; torchvision `BoxCoder`): `encode_boxes` / `decode_boxes`.
- KL-Loss (He et al. 2019): each corner's offset from the anchor's, over the anchor's size: `encode_corners`.
- YOLOv1 (Redmon et al. 2016): cell-relative centre, square-rooted size relative to the image.
- YOLOv2/v3 (Redmon & Farhadi 2017/2018): sigmoid offset inside the cell, anchor x exp(scale).
- FCOS (Tian et al. 2019): distances (l, t, r, b) from a location to the box sides, optionally / stride.
- CenterNet (Zhou et al. 2019): peak cell, sub-cell offset of the centre, size.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.ops.boxes import cxcywh_to_xyxy, is_valid_box, xyxy_to_cxcywh

DEFAULT_SCALE_CLIP = math.log(1000.0 / 16)
_UNIT_BOX = np.array([0.0, 0.0, 1.0, 1.0], np.float32)


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _safe_log_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
  """log(num / den) where both are positive and finite, else 0 — with finite gradients everywhere."""
  ok = (num > 0) & (den > 0) & jnp.isfinite(num) & jnp.isfinite(den)
  return jnp.where(ok, jnp.log(jnp.where(ok, num, 1.0) / jnp.where(ok, den, 1.0)), 0.0)


def encode_boxes(boxes: jax.Array, anchors: jax.Array, *,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Returns `[..., 4]` Faster R-CNN regression targets `(dx, dy, dw, dh)` of `boxes` relative to `anchors`.

  dx = wx (x - xa) / wa, dy = wy (y - ya) / ha, dw = ww log(w / wa), dh = wh log(h / ha), with centres and sizes of
  continuous xyxy boxes; equal to torchvision's `BoxCoder(weights).encode_single` (which also uses no "+1").
  Where a box or anchor is degenerate (`is_valid_box` False) the target is 0 with a zero gradient, not inf/NaN.

  Args:
    boxes: `[..., 4]` xyxy pixels (the matched ground truth).
    anchors: `[..., 4]` xyxy pixels (anchors or proposals), broadcastable with `boxes`.
    weights: `(wx, wy, ww, wh)`, e.g. (10, 10, 5, 5) for the Fast R-CNN head, (1, 1, 1, 1) for the RPN.
  """
  wx, wy, ww, wh = weights
  boxes, anchors = jnp.broadcast_arrays(_f32(boxes), _f32(anchors))
  valid = (is_valid_box(boxes) & is_valid_box(anchors))[..., None]
  b = xyxy_to_cxcywh(jnp.where(valid, boxes, _UNIT_BOX))
  a = xyxy_to_cxcywh(jnp.where(valid, anchors, _UNIT_BOX))
  deltas = jnp.stack([wx * (b[..., 0] - a[..., 0]) / a[..., 2], wy * (b[..., 1] - a[..., 1]) / a[..., 3],
                      ww * jnp.log(b[..., 2] / a[..., 2]), wh * jnp.log(b[..., 3] / a[..., 3])], axis=-1)
  return jnp.where(valid, deltas, 0.0)


def decode_boxes(deltas: jax.Array, anchors: jax.Array, *,
                 weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clip: float = DEFAULT_SCALE_CLIP) -> jax.Array:
  """Returns `[..., 4]` xyxy boxes from Faster R-CNN deltas `(dx, dy, dw, dh)` applied to `anchors`.

  The inverse of `encode_boxes`; dw and dh are clamped from above at `clip` (log(1000/16) as in Detectron and
  torchvision) so exp() cannot overflow. Equal to torchvision's `BoxCoder.decode_single`, except that a NaN / inf
  anchor decodes as the empty box at the origin (torchvision propagates NaN), so the output is finite for finite
  deltas.

  Args:
    deltas: `[..., 4]` (any float dtype; decoded in float32).
    anchors: `[..., 4]` xyxy pixels, broadcastable with `deltas`.
    weights: `(wx, wy, ww, wh)` used at encoding.
    clip: upper bound on dw / dh after dividing by the weights.
  """
  wx, wy, ww, wh = weights
  deltas = _f32(deltas)
  anchors = _f32(anchors)
  # Zero and negative sizes decode by the same arithmetic as torchvision; only NaN / inf anchors are replaced.
  a = xyxy_to_cxcywh(jnp.where(jnp.all(jnp.isfinite(anchors), axis=-1, keepdims=True), anchors, 0.0))
  dx = deltas[..., 0] / wx
  dy = deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, clip)
  dh = jnp.minimum(deltas[..., 3] / wh, clip)
  cx = dx * a[..., 2] + a[..., 0]
  cy = dy * a[..., 3] + a[..., 1]
  w = jnp.exp(dw) * a[..., 2]
  h = jnp.exp(dh) * a[..., 3]
  return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def encode_corners(boxes: jax.Array, anchors: jax.Array, *,
                   weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Returns `[..., 4]` corner regression targets `(t_x1, t_y1, t_x2, t_y2)` of `boxes` relative to `anchors`.

  t_x1 = w1 (x1 - x1a) / wa, t_y1 = w2 (y1 - y1a) / ha, t_x2 = w3 (x2 - x2a) / wa, t_y2 = w4 (y2 - y2a) / ha: the
  parametrisation of "Bounding Box Regression with Uncertainty" (He et al. 2019, eq. 1), where each target moves
  one box side, so that a variance per target is a variance per side (variance voting needs that). Degenerate
  boxes or anchors give 0 with a zero gradient.

  Args:
    boxes: `[..., 4]` xyxy pixels. anchors: `[..., 4]` xyxy pixels, broadcastable with `boxes`.
    weights: `(w1, w2, w3, w4)` scale of each target (the deltas' unit is anchor size / weight).
  """
  boxes, anchors = jnp.broadcast_arrays(_f32(boxes), _f32(anchors))
  valid = (is_valid_box(boxes) & is_valid_box(anchors))[..., None]
  b = jnp.where(valid, boxes, _UNIT_BOX)
  a = jnp.where(valid, anchors, _UNIT_BOX)
  size = jnp.concatenate([a[..., 2:] - a[..., :2]] * 2, axis=-1)
  return jnp.where(valid, _f32(weights) * (b - a) / size, 0.0)


def decode_corners(deltas: jax.Array, anchors: jax.Array, *,
                   weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
  """Returns `[..., 4]` xyxy boxes from corner deltas `(t_x1, t_y1, t_x2, t_y2)` (the inverse of `encode_corners`).

  Linear in the deltas (no exp, no clamp); a non-finite anchor decodes from the empty box at the origin, so the
  output is finite for finite deltas. A coordinate's variance in pixels is the delta's times (size / weight)^2.
  """
  anchors = _f32(anchors)
  a = jnp.where(jnp.all(jnp.isfinite(anchors), axis=-1, keepdims=True), anchors, 0.0)
  size = jnp.concatenate([a[..., 2:] - a[..., :2]] * 2, axis=-1)
  return a + _f32(deltas) * size / _f32(weights)


def encode_yolov1(boxes: jax.Array, *, grid_size: tuple[int, int],
                  image_size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """Returns YOLOv1 targets: the responsible cell and `(x, y, sqrt(w), sqrt(h))`.

  The centre is written relative to the bounds of the cell that contains it (in [0, 1)), the size relative to the
  image and square-rooted so that the squared error weighs small-box errors more (YOLOv1, eq. 3).

  Args:
    boxes: `[..., 4]` xyxy pixels.
    grid_size: `(S_h, S_w)` cells.
    image_size: `(H, W)` pixels.

  Returns:
    cells: int32 `[..., 2]` (row i, column j) of the responsible cell, clipped into the grid.
    targets: `[..., 4]` float32 `(x_in_cell, y_in_cell, sqrt(w / W), sqrt(h / H))`.
  """
  gh, gw = grid_size
  ih, iw = image_size
  valid, c = _valid_cxcywh(boxes)
  gx = c[..., 0] / iw * gw
  gy = c[..., 1] / ih * gh
  j = jnp.clip(jnp.floor(gx), 0, gw - 1)
  i = jnp.clip(jnp.floor(gy), 0, gh - 1)
  sw = _safe_sqrt(c[..., 2] / iw)
  sh = _safe_sqrt(c[..., 3] / ih)
  cells = jnp.where(valid[..., None], jnp.stack([i, j], axis=-1), 0).astype(jnp.int32)
  return cells, jnp.where(valid[..., None], jnp.stack([gx - j, gy - i, sw, sh], axis=-1), 0.0)


def _valid_cxcywh(boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Validity `[...]` and `[..., 4]` (cx, cy, w, h) of xyxy boxes, a unit box standing in for degenerate ones."""
  boxes = _f32(boxes)
  valid = is_valid_box(boxes)
  return valid, xyxy_to_cxcywh(jnp.where(valid[..., None], boxes, _UNIT_BOX))


def _safe_sqrt(x: jax.Array) -> jax.Array:
  ok = x > 0
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, x, 1.0)), 0.0)


def decode_yolov1(targets: jax.Array, cells: jax.Array, *, grid_size: tuple[int, int],
                  image_size: tuple[int, int]) -> jax.Array:
  """Returns `[..., 4]` xyxy pixels from YOLOv1 `(x_in_cell, y_in_cell, sqrt w, sqrt h)` at `cells [..., 2]`."""
  gh, gw = grid_size
  ih, iw = image_size
  targets = _f32(targets)
  cells = _f32(cells)
  cx = (cells[..., 1] + targets[..., 0]) / gw * iw
  cy = (cells[..., 0] + targets[..., 1]) / gh * ih
  w = targets[..., 2] ** 2 * iw
  h = targets[..., 3] ** 2 * ih
  return cxcywh_to_xyxy(jnp.stack([cx, cy, w, h], axis=-1))


def encode_yolo(boxes: jax.Array, anchors_wh: jax.Array, *, stride: float) -> tuple[jax.Array, jax.Array]:
  """Returns YOLOv2/v3 targets: the responsible cell and `(sigma(tx), sigma(ty), tw, th)`.

  YOLOv2 predicts b_x = sigma(t_x) + c_x, b_y = sigma(t_y) + c_y (grid units), b_w = p_w exp(t_w),
  b_h = p_h exp(t_h). The centre targets returned here are the post-sigmoid offsets in [0, 1) (what YOLOv2/v3
  regress with a BCE or squared error on sigma(t)); tw = log(w / p_w), th = log(h / p_h).

  Args:
    boxes: `[..., 4]` xyxy pixels.
    anchors_wh: `[..., 2]` anchor (prior) width and height in pixels, broadcastable with `boxes`.
    stride: pixels per cell of the feature map.

  Returns:
    cells: int32 `[..., 2]` (row i, column j) containing the box centre.
    targets: `[..., 4]` float32.
  """
  valid, c = _valid_cxcywh(boxes)
  anchors_wh = _f32(anchors_wh)
  gx, gy = c[..., 0] / stride, c[..., 1] / stride
  j, i = jnp.floor(gx), jnp.floor(gy)
  tw = _safe_log_ratio(c[..., 2], anchors_wh[..., 0])
  th = _safe_log_ratio(c[..., 3], anchors_wh[..., 1])
  cells = jnp.where(valid[..., None], jnp.stack([i, j], axis=-1), 0).astype(jnp.int32)
  return cells, jnp.where(valid[..., None], jnp.stack([gx - j, gy - i, tw, th], axis=-1), 0.0)


def decode_yolo(raw: jax.Array, anchors_wh: jax.Array, cells: jax.Array, *, stride: float,
                clip: float = DEFAULT_SCALE_CLIP, xy_scale: float | jax.Array = 1.0) -> jax.Array:
  """Returns `[..., 4]` xyxy pixels from raw YOLOv2/v3/v4 outputs `(tx, ty, tw, th)`.

  The course's decoding (`box_xy = (sigmoid(t_xy) + cell) / grid`, `box_wh = exp(t_wh) * anchors / grid`) in pixel
  units: centre = (s sigma(t) - (s - 1) / 2 + cell) * stride, size = anchor_px * exp(t), with t_w, t_h clamped at
  `clip`. s = `xy_scale` is YOLOv4's grid-sensitivity factor (darknet `scale_x_y`, 1.05-1.2 in yolov4.cfg): with
  s > 1 the centre reaches the cell's borders at finite t (s = 1: YOLOv2/v3, the centre stays strictly inside).

  Args:
    raw: `[..., 4]` network outputs (before the sigmoid).
    anchors_wh: `[..., 2]` anchor sizes in pixels.
    cells: `[..., 2]` (row i, column j) of each prediction.
    stride: pixels per cell (a scalar or `[...]`).
    xy_scale: s (a scalar or `[...]`, per prediction).
  """
  raw = _f32(raw)
  anchors_wh = _f32(anchors_wh)
  cells = _f32(cells)
  s = _f32(xy_scale)
  cx = (s * jax.nn.sigmoid(raw[..., 0]) - (s - 1) / 2 + cells[..., 1]) * stride
  cy = (s * jax.nn.sigmoid(raw[..., 1]) - (s - 1) / 2 + cells[..., 0]) * stride
  w = anchors_wh[..., 0] * jnp.exp(jnp.minimum(raw[..., 2], clip))
  h = anchors_wh[..., 1] * jnp.exp(jnp.minimum(raw[..., 3], clip))
  return cxcywh_to_xyxy(jnp.stack([cx, cy, w, h], axis=-1))


def encode_ltrb(boxes: jax.Array, points: jax.Array, *, stride: float | None = None) -> jax.Array:
  """Returns `[..., 4]` FCOS targets `(l, t, r, b)`: distances from `points` to the sides of `boxes`.

  l = x - x1, t = y - y1, r = x2 - x, b = y2 - y; all positive iff the point lies inside the box (FCOS eq. 1).
  With `stride`, distances are divided by the level's stride (FCOS's "norm_reg_targets" improvement).

  Args:
    boxes: `[..., 4]` xyxy pixels.
    points: `[..., 2]` (x, y) pixel locations, e.g. cell centres ((j + 0.5) s, (i + 0.5) s).
    stride: optional normaliser.
  """
  points = _f32(points)
  boxes, xyxy = jnp.broadcast_arrays(_f32(boxes), jnp.concatenate([points, points], axis=-1))
  # Empty and inverted boxes give finite distances (some negative: "outside"); only NaN / inf inputs are zeroed.
  finite = jnp.all(jnp.isfinite(boxes) & jnp.isfinite(xyxy), axis=-1, keepdims=True)
  boxes, xyxy = jnp.where(finite, boxes, 0.0), jnp.where(finite, xyxy, 0.0)
  ltrb = jnp.concatenate([xyxy[..., :2] - boxes[..., :2], boxes[..., 2:] - xyxy[..., 2:]], axis=-1)
  return ltrb if stride is None else ltrb / stride


def decode_ltrb(ltrb: jax.Array, points: jax.Array, *, stride: float | None = None) -> jax.Array:
  """Returns `[..., 4]` xyxy pixels from FCOS distances `(l, t, r, b)` at `points [..., 2]` (inverse of encode)."""
  ltrb, points = _f32(ltrb), _f32(points)
  if stride is not None:
    ltrb = ltrb * stride
  return jnp.stack([points[..., 0] - ltrb[..., 0], points[..., 1] - ltrb[..., 1],
                    points[..., 0] + ltrb[..., 2], points[..., 1] + ltrb[..., 3]], axis=-1)


def encode_centernet(boxes: jax.Array, *, stride: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns CenterNet targets: the peak cell, the sub-cell offset and the size.

  With the box centre p in input pixels and output stride R: the peak is at the integer cell floor(p / R), the
  offset target is p / R - floor(p / R) in [0, 1) (CenterNet eq. 2), and the size is (w, h) in input pixels.
  Decoding x = (j + offset_x) R is consistent with CONVENTIONS' cell centres at (j + 0.5) R: a centre in the
  middle of cell j has offset 0.5.

  Returns:
    cells: int32 `[..., 2]` (row i, column j); offsets: `[..., 2]` (ox, oy); sizes: `[..., 2]` (w, h).
  """
  valid, c = _valid_cxcywh(boxes)
  g = c[..., :2] / stride
  cell_xy = jnp.floor(g)
  keep = valid[..., None]
  cells = jnp.where(keep, jnp.stack([cell_xy[..., 1], cell_xy[..., 0]], axis=-1), 0).astype(jnp.int32)
  return cells, jnp.where(keep, g - cell_xy, 0.0), jnp.where(keep, c[..., 2:], 0.0)


def decode_centernet(cells: jax.Array, offsets: jax.Array, sizes: jax.Array, *, stride: float) -> jax.Array:
  """Returns `[..., 4]` xyxy pixels from CenterNet peak `cells [..., 2]` (i, j), `offsets` and `sizes [..., 2]`."""
  cells, offsets, sizes = _f32(cells), _f32(offsets), _f32(sizes)
  cx = (cells[..., 1] + offsets[..., 0]) * stride
  cy = (cells[..., 0] + offsets[..., 1]) * stride
  return cxcywh_to_xyxy(jnp.stack([cx, cy, sizes[..., 0], sizes[..., 1]], axis=-1))
