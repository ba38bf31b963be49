"""Anchors and prior boxes: per-level grids of reference boxes for Faster R-CNN, FPN, RetinaNet, SSD and YOLO.

Cell `(i, j)` of a stride-`s` map is centred at `((j + offset) s, (i + offset) s)` with `offset = 0.5` by default
(CONVENTIONS). torchvision's `AnchorGenerator` and detectron2 put anchor centres at `(j s, i s)`: pass
`offset=0.0` to reproduce their numbers. Anchors are ordered row-major over cells with the anchors of one cell
innermost, i.e. index `(i * W + j) * A + a`, matching a head that outputs `[H, W, A * k]`.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import jax.numpy as jnp

# YOLOv3's COCO anchors (k-means on COCO, w x h pixels at 416 input), grouped by the stride that predicts them.
YOLOV3_ANCHORS = {
    8: ((10, 13), (16, 30), (33, 23)),
    16: ((30, 61), (62, 45), (59, 119)),
    32: ((116, 90), (156, 198), (373, 326)),
}
# YOLOv2's VOC anchors, in grid units of the stride-32 output (the course's `anchors_tensor`).
YOLOV2_VOC_ANCHORS = ((1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053),
                      (11.2364, 10.0071))


def anchor_templates(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
  """Returns `[len(sizes) * len(aspect_ratios), 4]` xyxy anchors centred at the origin.

  For size s and ratio r = h / w the anchor keeps area s^2: w = s / sqrt(r), h = s sqrt(r) (Faster R-CNN,
  torchvision's convention). Order: sizes outer, ratios inner. NumPy, since templates are static constants.
  """
  out = []
  for s in sizes:
    for r in aspect_ratios:
      w, h = s / math.sqrt(r), s * math.sqrt(r)
      out.append([-w / 2, -h / 2, w / 2, h / 2])
  return np.asarray(out, np.float32).reshape(-1, 4)


def _centers(feature_shape: tuple[int, int], stride: float, offset: float) -> np.ndarray:
  h, w = feature_shape
  ys = (np.arange(h, dtype=np.float64) + offset) * stride
  xs = (np.arange(w, dtype=np.float64) + offset) * stride
  yy, xx = np.meshgrid(ys, xs, indexing="ij")
  return np.stack([xx.reshape(-1), yy.reshape(-1)], axis=-1)


def _place(templates: np.ndarray, centers: np.ndarray) -> np.ndarray:
  """`[C * A, 4]`: every template `[A, 4]` shifted to every centre `[C, 2]`, centres outer."""
  # NumPy: shapes are static, so under jit the anchors are a constant, and eagerly no kernel is compiled per shape.
  shifts = np.concatenate([centers, centers], axis=-1)
  return (shifts[:, None, :] + templates[None, :, :]).reshape(-1, 4)


def _grid(feature_shape: tuple[int, int], stride: float, sizes: Sequence[float], aspect_ratios: Sequence[float],
          offset: float) -> np.ndarray:
  return _place(anchor_templates(sizes, aspect_ratios).astype(np.float64), _centers(feature_shape, stride, offset))


def grid_centers(feature_shape: tuple[int, int], *, stride: float, offset: float = 0.5) -> jnp.ndarray:
  """Returns `[H * W, 2]` (x, y) image coordinates of the cell centres of an `(H, W)` map, row-major."""
  return jnp.asarray(_centers(feature_shape, stride, offset), jnp.float32)


def grid_anchors(feature_shape: tuple[int, int], *, stride: float, sizes: Sequence[float],
                 aspect_ratios: Sequence[float], offset: float = 0.5) -> jnp.ndarray:
  """Returns `[H * W * A, 4]` xyxy pixel anchors, A = len(sizes) * len(aspect_ratios), for one feature level.

  A 38 x 50 stride-16 map with 3 sizes x 3 ratios gives 38 * 50 * 9 = 17,100 anchors (the course's Faster R-CNN
  example). Index `(i * W + j) * A + a`.
  """
  return jnp.asarray(_grid(feature_shape, stride, sizes, aspect_ratios, offset), jnp.float32)


def multilevel_anchors(feature_shapes: Sequence[tuple[int, int]], *, strides: Sequence[float],
                       sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float],
                       offset: float = 0.5) -> tuple[jnp.ndarray, tuple[int, ...]]:
  """Returns anchors of all levels concatenated `[sum_l H_l W_l A_l, 4]` and the per-level counts."""
  levels = [_grid(shape, stride, level_sizes, aspect_ratios, offset)
            for shape, stride, level_sizes in zip(feature_shapes, strides, sizes, strict=True)]
  return jnp.asarray(np.concatenate(levels, axis=0), jnp.float32), tuple(int(a.shape[0]) for a in levels)


def faster_rcnn_anchors(feature_shape: tuple[int, int], *, stride: float = 16, offset: float = 0.5) -> jnp.ndarray:
  """Returns `[H * W * 9, 4]` xyxy pixel anchors of Faster R-CNN's RPN on one C4 map: sizes 128, 256, 512 x ratios
  1:2, 1:1, 2:1 (Ren et al. 2015, sec. 3.1.1); a 38 x 50 map gives 17,100."""
  return grid_anchors(feature_shape, stride=stride, sizes=(128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0),
                      offset=offset)


def fpn_anchors(feature_shapes: Sequence[tuple[int, int]], *, offset: float = 0.5
                ) -> tuple[jnp.ndarray, tuple[int, ...]]:
  """Returns FPN RPN anchors `[sum_l H_l W_l 3, 4]` xyxy pixels and the per-level counts, for P2-P6.

  Strides 4..64, one size per level (areas 32^2 ... 512^2) and ratios 1:2, 1:1, 2:1: 15 anchor shapes in all, 3 per
  cell (Lin et al., "Feature Pyramid Networks", 2017, sec. 4.1). `feature_shapes`: the 5 `(H, W)`, P2 first.
  """
  if len(feature_shapes) != 5:
    raise ValueError(f"FPN anchors need the 5 levels P2-P6, got {len(feature_shapes)} feature shapes")
  return multilevel_anchors(feature_shapes, strides=(4, 8, 16, 32, 64), sizes=[(s,) for s in (32, 64, 128, 256, 512)],
                            aspect_ratios=(0.5, 1.0, 2.0), offset=offset)


def retinanet_anchors(feature_shapes: Sequence[tuple[int, int]], *, levels: Sequence[int] = (3, 4, 5, 6, 7),
                      base_scale: float = 4.0, scales_per_octave: int = 3,
                      aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), offset: float = 0.5
                      ) -> tuple[jnp.ndarray, tuple[int, ...]]:
  """Returns RetinaNet anchors `[sum_l H_l W_l A, 4]` xyxy pixels and the per-level counts.

  Level l (stride 2^l) has anchors of sizes `base_scale * 2^l * 2^(k / scales_per_octave)`, k = 0..scales-1, at
  each aspect ratio: the paper's P3-P7 with base size 4 x stride, scales 2^0, 2^(1/3), 2^(2/3) and ratios 1:2, 1:1,
  2:1 give A = 9 anchors per cell and sizes 32..813 pixels (Lin et al. 2017, sec. 4). `levels` and `base_scale`
  move the sizes to other object scales (smaller images). `feature_shapes`: the `(H, W)` of each level, finest first.
  """
  if len(feature_shapes) != len(levels):
    raise ValueError(f"RetinaNet anchors for levels {tuple(levels)} need {len(levels)} feature shapes, got "
                     f"{len(feature_shapes)}")
  strides = [2**level for level in levels]
  sizes = [tuple(base_scale * s * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)) for s in strides]
  return multilevel_anchors(feature_shapes, strides=strides, sizes=sizes, aspect_ratios=aspect_ratios, offset=offset)


def ssd_scales(num_levels: int, *, s_min: float = 0.2, s_max: float = 0.9) -> list[float]:
  """Returns the `num_levels` SSD scales s_k = s_min + (s_max - s_min)(k - 1)/(m - 1), k = 1..m (Liu et al. 2016,
  eq. 4), as fractions of the image side."""
  if num_levels == 1:
    return [s_min]
  return [s_min + (s_max - s_min) * k / (num_levels - 1) for k in range(num_levels)]


def ssd_priors(feature_sizes: Sequence[int], *, aspect_ratios: Sequence[Sequence[float]],
               s_min: float = 0.2, s_max: float = 0.9, clip: bool = False) -> jnp.ndarray:
  """Returns `[P, 4]` SSD prior boxes, xyxy in units of the image size (multiply by the image side for pixels).

  Level k (square map of `feature_sizes[k]` cells, centres at ((j + 0.5) / f, (i + 0.5) / f)) gets, per cell:
  a square of side s_k, the extra square of side sqrt(s_k s_{k+1}) (the paper leaves s_{m+1} undefined; s_{m+1} = 1
  as in the TF Object Detection API's SSD anchor generator; ssd.pytorch's 315/300 differs on the last level), and for
  each ratio a in `aspect_ratios[k]` (listed without 1; their reciprocals are added) a box w = s_k sqrt(a),
  h = s_k / sqrt(a). SSD300 with maps 38, 19, 10, 5, 3, 1 and ratios (2,), (2, 3), (2, 3), (2, 3), (2,), (2,)
  has 4, 6, 6, 6, 4, 4 priors per cell: 8732 in all.
  """
  scales = ssd_scales(len(feature_sizes), s_min=s_min, s_max=s_max) + [1.0]
  out = []
  for k, f in enumerate(feature_sizes):
    s, s_next = scales[k], scales[k + 1]
    shapes = [(s, s), (math.sqrt(s * s_next),) * 2]
    for a in aspect_ratios[k]:
      shapes += [(s * math.sqrt(a), s / math.sqrt(a)), (s / math.sqrt(a), s * math.sqrt(a))]
    wh = np.asarray(shapes, np.float32)
    c = (np.arange(f, dtype=np.float32) + 0.5) / f
    cy, cx = np.meshgrid(c, c, indexing="ij")
    centers = np.stack([cx.ravel(), cy.ravel()], -1)[:, None, :]
    boxes = np.concatenate([centers - wh / 2, centers + wh / 2], -1).reshape(-1, 4)
    out.append(boxes)
  priors = np.concatenate(out, 0)
  if clip:
    priors = np.clip(priors, 0.0, 1.0)
  return jnp.asarray(priors)


SSD300_FEATURE_SIZES = (38, 19, 10, 5, 3, 1)
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


def yolo_anchors(feature_shape: tuple[int, int], *, stride: int,
                 anchors_wh: Sequence[tuple[float, float]] | None = None, offset: float = 0.5) -> jnp.ndarray:
  """Returns `[H * W * A, 4]` xyxy anchors of one YOLO output scale (default: YOLOv3's COCO set for `stride`).

  YOLO assigns each object to the cell containing its centre and the anchor of best shape IoU; these boxes (the
  priors placed at cell centres) are what that shape matching compares against.
  """
  wh = np.asarray(anchors_wh if anchors_wh is not None else YOLOV3_ANCHORS[stride], np.float64)
  return jnp.asarray(_place(np.concatenate([-wh / 2, wh / 2], -1), _centers(feature_shape, stride, offset)),
                     jnp.float32)
