"""Geometric transforms of one example: resize, letterbox, horizontal flip, CenterNet's random scale + crop, and
SSD's zoom-out and min-IoU crop.

Every transform here is an axis-aligned affine map `x' = x * sx + tx, y' = y * sy + ty` of the image plane. The
image is resampled with PIL (bilinear, antialiased when shrinking) over the exact source rectangle that lands on
each output pixel, so pixels and boxes move together to float precision; the map is composed into the example's
`frame`, so `to_original_frame(boxes, frame)` takes boxes on the transformed image back to stored pixels.

Box rule (the same in every transform and in Mosaic): each box is clipped to its source image, mapped, and clipped
to the output window. It is kept when the clipped box is at least `min_size` pixels wide and high AND at least
`min_visible` of the mapped box's area is still inside the window; otherwise it is dropped together with its
label, crowd and difficult flags. Boxes that were degenerate (or NaN) to begin with are dropped by the same rule.
`hflip` and `zoom_out` lose no pixel, so they move boxes without applying the rule; `min_iou_crop` has SSD's own
rule (a box stays when its centre is inside the crop).

Per-image proposals (`proposals [P, 4]` with `proposal_valid [P]`, see `jaxdet.proposals.source`) move like boxes
but are never dropped: they are clipped to the output window, and one left with no area is marked invalid, so P
stays fixed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

from jaxdet.data.source import Example

BOX_FIELDS = ("boxes", "labels", "crowd", "difficult")  # per-box fields: filtered together

DEFAULT_FILL = 114  # grey near the ImageNet mean, so padding normalises to about 0 (YOLO's letterbox colour)
MIN_SIZE = 1.0
MIN_VISIBLE = 0.25


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
  """Returns `(height, width)` from an int (square) or a `(height, width)` pair."""
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def compose_frame(frame: np.ndarray, *, scale: tuple[float, float], offset: tuple[float, float]) -> np.ndarray:
  """Returns float32 `[4]` (sx, sy, tx, ty): `frame` followed by the map `x' = x * scale + offset`."""
  sx, sy, tx, ty = (float(v) for v in frame)
  (ax, ay), (bx, by) = scale, offset
  return np.array([sx * ax, sy * ay, tx * ax + bx, ty * ay + by], np.float32)


def map_boxes(boxes: np.ndarray, *, scale: tuple[float, float], offset: tuple[float, float]) -> np.ndarray:
  """Returns `[N, 4]` xyxy boxes under `x' = x * scale + offset`; a negative scale (a flip) swaps the corners.

  An inverted box (x2 < x1) stays inverted, so the box rule still drops it.
  """
  (sx, sy), (tx, ty) = scale, offset
  x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
  xs = (x1 * sx + tx, x2 * sx + tx) if sx >= 0 else (x2 * sx + tx, x1 * sx + tx)
  ys = (y1 * sy + ty, y2 * sy + ty) if sy >= 0 else (y2 * sy + ty, y1 * sy + ty)
  return np.stack([xs[0], ys[0], xs[1], ys[1]], axis=1).astype(np.float32)


def transform_boxes(boxes: np.ndarray, *, source_hw: tuple[int, int], scale: tuple[float, float],
                    offset: tuple[float, float], window: tuple[float, float, float, float],
                    min_size: float = MIN_SIZE, min_visible: float = MIN_VISIBLE) -> tuple[np.ndarray, np.ndarray]:
  """Returns `(boxes [N, 4], keep [N] bool)`: boxes mapped and clipped to `window` (x1, y1, x2, y2), and the rule.

  `source_hw` is the (height, width) of the image the boxes are on; they are clipped to it first, so that the
  visible fraction is measured against the part of the object that was in the picture.
  """
  h, w = source_hw
  boxes = np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0.0, [w, h, w, h])
  mapped = map_boxes(boxes, scale=scale, offset=offset)
  wx1, wy1, wx2, wy2 = window
  clipped = np.clip(mapped, [wx1, wy1, wx1, wy1], [wx2, wy2, wx2, wy2]).astype(np.float32)
  cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
  area = (mapped[:, 2] - mapped[:, 0]) * (mapped[:, 3] - mapped[:, 1])
  with np.errstate(invalid="ignore"):
    keep = (cw >= min_size) & (ch >= min_size) & (cw * ch >= min_visible * area)
  return clipped, keep


def move_proposals(example: Example, *, source_hw: tuple[int, int], scale: tuple[float, float],
                   offset: tuple[float, float], window: tuple[float, float, float, float]) -> Example:
  """Returns `example` with its `proposals` (if any) mapped and clipped to `window`; empty ones become invalid."""
  if "proposals" not in example:
    return example
  boxes, _ = transform_boxes(example["proposals"], source_hw=source_hw, scale=scale, offset=offset, window=window)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  valid = np.asarray(example["proposal_valid"], bool) & (area > 0)
  return {**example, "proposals": np.where(valid[:, None], boxes, 0.0).astype(np.float32), "proposal_valid": valid}


def select_boxes(example: Example, keep: np.ndarray) -> Example:
  """Returns `example` with only the boxes where `keep` (and their labels / crowd / difficult flags)."""
  out = dict(example)
  for key in BOX_FIELDS:
    out[key] = example[key][keep]
  return out


def paste_affine(canvas: np.ndarray, image: np.ndarray, *, scale: tuple[float, float],
                 offset: tuple[float, float], window: tuple[int, int, int, int] | None = None) -> None:
  """Draws `image` mapped by `x' = x * scale + offset` (positive scales) into `canvas [h, w, 3]`, in place.

  Only output pixels that lie wholly inside the mapped image and inside `window` (x1, y1, x2, y2 integer pixels,
  default the whole canvas) are written; the others keep the canvas' value. Each written pixel is resampled from
  exactly the source rectangle it covers (PIL's `resize(box=...)`), so content and the map agree sub-pixel.
  """
  ih, iw = image.shape[:2]
  (sx, sy), (tx, ty) = scale, offset
  wx1, wy1, wx2, wy2 = window if window is not None else (0, 0, canvas.shape[1], canvas.shape[0])
  eps = 1e-6  # float noise in e.g. 0.1 * 10 must not lose a whole row of pixels
  ox1 = min(max(math.ceil(tx - eps), wx1), wx2)
  oy1 = min(max(math.ceil(ty - eps), wy1), wy2)
  ox2 = max(min(math.floor(iw * sx + tx + eps), wx2), ox1)
  oy2 = max(min(math.floor(ih * sy + ty + eps), wy2), oy1)
  if ox2 <= ox1 or oy2 <= oy1:
    return
  box = (min(max((ox1 - tx) / sx, 0.0), iw), min(max((oy1 - ty) / sy, 0.0), ih),
         min(max((ox2 - tx) / sx, 0.0), iw), min(max((oy2 - ty) / sy, 0.0), ih))
  if sx == 1 and sy == 1 and float(tx).is_integer() and float(ty).is_integer():
    x1, y1 = int(box[0]), int(box[1])  # unit scale, whole-pixel shift: a copy, no resampling
    patch = image[y1:y1 + oy2 - oy1, x1:x1 + ox2 - ox1]
  else:
    patch = np.asarray(Image.fromarray(image).resize((ox2 - ox1, oy2 - oy1), Image.BILINEAR, box=box))
  canvas[oy1:oy2, ox1:ox2] = patch


def warp_example(example: Example, *, size: tuple[int, int], scale: tuple[float, float],
                 offset: tuple[float, float], fill: int = DEFAULT_FILL, min_size: float = MIN_SIZE,
                 min_visible: float = MIN_VISIBLE) -> Example:
  """Returns the example with its image mapped by `x' = x * scale + offset` onto a `size` (h, w) canvas.

  Pixels the image does not cover get `fill`; boxes follow the module's rule; the map is composed into `frame`.
  """
  h, w = size
  image = example["image"]
  canvas = np.full((h, w, 3), fill, np.uint8)
  paste_affine(canvas, image, scale=scale, offset=offset)
  boxes, keep = transform_boxes(example["boxes"], source_hw=image.shape[:2], scale=scale, offset=offset,
                                window=(0.0, 0.0, float(w), float(h)), min_size=min_size, min_visible=min_visible)
  out = select_boxes({**example, "boxes": boxes}, keep)
  out = move_proposals(out, source_hw=image.shape[:2], scale=scale, offset=offset,
                       window=(0.0, 0.0, float(w), float(h)))
  out["image"] = canvas
  out["frame"] = compose_frame(example["frame"], scale=scale, offset=offset)
  return out


def resize(example: Example, size: int | Sequence[int], *, min_size: float = MIN_SIZE,
           min_visible: float = MIN_VISIBLE) -> Example:
  """Returns the example resized to `size` (h, w or int), aspect ratio not kept (each axis scaled on its own)."""
  h, w = as_size(size)
  ih, iw = example["image"].shape[:2]
  return warp_example(example, size=(h, w), scale=(w / iw, h / ih), offset=(0.0, 0.0), min_size=min_size,
                      min_visible=min_visible)


def letterbox(example: Example, size: int | Sequence[int], *, fill: int = DEFAULT_FILL, min_size: float = MIN_SIZE,
              min_visible: float = MIN_VISIBLE) -> Example:
  """Returns the example scaled to fit in `size` keeping its aspect ratio, centred and padded with `fill`.

  As YOLO's letterbox. The scaled image has whole-pixel sides (`round(side * s)`), so each axis' scale is the
  exact ratio of those sides (they differ from each other by under one pixel's worth).
  """
  h, w = as_size(size)
  ih, iw = example["image"].shape[:2]
  s = min(h / ih, w / iw)
  nh, nw = max(1, min(h, round(ih * s))), max(1, min(w, round(iw * s)))
  return warp_example(example, size=(h, w), scale=(nw / iw, nh / ih), offset=((w - nw) // 2, (h - nh) // 2),
                      fill=fill, min_size=min_size, min_visible=min_visible)


def hflip(example: Example) -> Example:
  """Returns the example mirrored left-right: image columns reversed, `x -> W - x` for boxes and `frame`."""
  image = example["image"]
  w = image.shape[1]
  out = dict(example)
  out["image"] = np.ascontiguousarray(image[:, ::-1])
  out["boxes"] = map_boxes(example["boxes"].reshape(-1, 4), scale=(-1.0, 1.0), offset=(float(w), 0.0))
  out["frame"] = compose_frame(example["frame"], scale=(-1.0, 1.0), offset=(float(w), 0.0))
  if "proposals" in example:
    mapped = map_boxes(example["proposals"].reshape(-1, 4), scale=(-1.0, 1.0), offset=(float(w), 0.0))
    out["proposals"] = np.where(example["proposal_valid"][:, None], mapped, 0.0).astype(np.float32)
  return out


def random_flip(example: Example, *, rng: np.random.Generator, prob: float = 0.5) -> Example:
  """Returns the example mirrored left-right with probability `prob` (one draw from `rng` either way)."""
  return hflip(example) if rng.uniform() < prob else example


def draw_scale_crop(rng: np.random.Generator, *, source_hw: tuple[int, int], size: tuple[int, int],
                    scale_range: tuple[float, float]) -> tuple[float, tuple[float, float]]:
  """Returns `(k, (tx, ty))`: the map `x' = x * k + t` of a random scale + crop (see `random_scale_crop`)."""
  (ih, iw), (h, w) = source_hw, size
  r = rng.uniform(*scale_range)
  k = max(h, w) / (r * max(ih, iw))  # output pixels per source pixel
  cw, ch = w / k, h / k
  x0 = rng.uniform(min(0.0, iw - cw), max(0.0, iw - cw))
  y0 = rng.uniform(min(0.0, ih - ch), max(0.0, ih - ch))
  return k, (-x0 * k, -y0 * k)


def random_scale_crop(example: Example, size: int | Sequence[int], *, rng: np.random.Generator,
                      scale_range: tuple[float, float] = (0.6, 1.3), fill: int = DEFAULT_FILL,
                      min_size: float = MIN_SIZE, min_visible: float = MIN_VISIBLE) -> Example:
  """Returns a random `size` (h, w) crop of the randomly scaled example: CenterNet's training augmentation.

  CenterNet (Zhou et al. 2019) takes a square of side `s = r * max(H, W)` with r in 0.6 .. 1.3 and maps it onto
  the network input. Here r ~ U(scale_range) (CenterNet draws r from the grid 0.6, 0.7, ..., 1.3), the window
  has the output's aspect ratio with its long side `r * max(H, W)`, and its corner is uniform over the positions
  where the window lies inside the image along an axis (window smaller) or the image lies inside the window
  (window larger, the rest is `fill`); CenterNet instead draws the centre away from a 128 px border.
  """
  size = as_size(size)
  k, offset = draw_scale_crop(rng, source_hw=example["image"].shape[:2], size=size, scale_range=scale_range)
  return warp_example(example, size=size, scale=(k, k), offset=offset, fill=fill, min_size=min_size,
                      min_visible=min_visible)


SSD_FILL = (124, 116, 104)  # the ImageNet mean pixel (RGB), which normalises to about 0: SSD fills with its mean
SSD_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9)


def zoom_out(example: Example, *, rng: np.random.Generator, prob: float = 0.5, max_ratio: float = 4.0,
             fill: Sequence[int] = SSD_FILL) -> Example:
  """Returns the example placed on a larger canvas of `fill` colour with probability `prob`: SSD's "zoom out".

  SSD's expansion (Liu et al. 2016, sec. 3.6; ssd.pytorch's `Expand`): for a ratio r ~ U(1, max_ratio) the canvas
  is `int(r H) x int(r W)` and the image's top-left corner lands at `(int(U(0, r W - W)), int(U(0, r H - H)))`,
  whole pixels, so the image is copied, not resampled, and boxes shift by the same integers. Together with the
  final resize this makes objects up to `max_ratio` times smaller — training data for the small priors. Draws the
  same number of values from `rng` whether it zooms or not.
  """
  zoom = rng.uniform() < prob
  ratio, fx, fy = rng.uniform(1.0, max_ratio), rng.uniform(), rng.uniform()
  if not zoom:
    return example
  image = example["image"]
  h, w = image.shape[:2]
  out_h, out_w = int(h * ratio), int(w * ratio)
  left, top = int(fx * (out_w - w)), int(fy * (out_h - h))
  canvas = np.empty((out_h, out_w, 3), np.uint8)
  canvas[...] = np.asarray(fill, np.uint8)
  canvas[top:top + h, left:left + w] = image
  offset = (float(left), float(top))
  out = {**example, "image": canvas, "boxes": map_boxes(example["boxes"].reshape(-1, 4), scale=(1.0, 1.0),
                                                        offset=offset),
         "frame": compose_frame(example["frame"], scale=(1.0, 1.0), offset=offset)}
  return move_proposals(out, source_hw=(h, w), scale=(1.0, 1.0), offset=offset, window=(0, 0, out_w, out_h))


def _iou_with(boxes: np.ndarray, rect: np.ndarray) -> np.ndarray:
  """float64 `[N]`: IoU of xyxy `boxes` with one xyxy `rect` (boxes of positive size only)."""
  lt = np.maximum(boxes[:, :2], rect[:2])
  rb = np.minimum(boxes[:, 2:], rect[2:])
  inter = np.prod(np.clip(rb - lt, 0.0, None), axis=1)
  area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) + np.prod(rect[2:] - rect[:2])
  return inter / (area - inter)


def centers_inside(boxes: np.ndarray, rect: Sequence[float]) -> np.ndarray:
  """Returns bool `[N]`: whether each xyxy box's centre lies strictly inside `rect` (x1, y1, x2, y2) — SSD's rule
  for the boxes a crop keeps (a centre on the crop's edge is outside; a NaN box is outside)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  centers = (boxes[:, :2] + boxes[:, 2:]) / 2
  rect = np.asarray(rect, np.float64)
  with np.errstate(invalid="ignore"):
    return np.all((centers > rect[:2]) & (centers < rect[2:]), axis=1)


def crop_example(example: Example, rect: Sequence[int], keep: np.ndarray) -> Example:
  """Returns the example cut to the integer pixel rectangle `rect` (x1, y1, x2, y2), keeping the boxes where
  `keep`, clipped to the rectangle; boxes and `frame` shift by `(-x1, -y1)`."""
  x1, y1, x2, y2 = (int(v) for v in rect)
  out = select_boxes(example, keep)
  boxes = np.clip(out["boxes"].reshape(-1, 4), [x1, y1, x1, y1], [x2, y2, x2, y2]) - np.array([x1, y1, x1, y1])
  out["boxes"] = boxes.astype(np.float32)
  out["image"] = np.ascontiguousarray(example["image"][y1:y2, x1:x2])
  out["frame"] = compose_frame(example["frame"], scale=(1.0, 1.0), offset=(float(-x1), float(-y1)))
  return move_proposals(out, source_hw=example["image"].shape[:2], scale=(1.0, 1.0), offset=(float(-x1), float(-y1)),
                        window=(0, 0, x2 - x1, y2 - y1))


def min_iou_crop(example: Example, *, rng: np.random.Generator, min_ious: Sequence[float] = SSD_MIN_IOUS,
                 max_trials: int = 50, min_scale: float = 0.3, aspect_range: tuple[float, float] = (0.5, 2.0),
                 max_rounds: int = 50) -> Example:
  """Returns a random crop of the example under SSD's sampling rules (Liu et al. 2016, sec. 2.2, "Data
  augmentation"), or the example itself.

  Each round picks, with equal chance, one of: the whole image (returned as it is), a crop whose IoU with at least
  one object is at least m for m in `min_ious` (0.1, 0.3, 0.5, 0.7, 0.9), or a crop without an IoU constraint. For
  that choice up to `max_trials` crops are drawn: sides `U(min_scale, 1)` times the image's, `h / w` inside
  `aspect_range` (else the trial fails), the corner uniform over the positions inside the image, rounded down to
  whole pixels (so the image is cut, not resampled). A crop is taken when it meets the IoU constraint and at least
  one object's centre lies strictly inside it; the objects whose centres lie inside are kept, clipped to the crop,
  the others dropped with their fields. When every trial fails a new round starts, as in the reference
  (ssd.pytorch's `RandomSampleCrop`, which loops without bound; after `max_rounds` the whole image is kept).

  Crops have sides in [0.3, 1] of the image as in the paper's Caffe model, ssd.pytorch and torchvision (the text
  says [0.1, 1]). ssd.pytorch leaves 0.5 out of its IoU options; the paper, Caffe and torchvision have it.
  Crowd regions and degenerate boxes count for neither the IoU constraint nor "at least one centre inside"; an
  example without other boxes is returned whole.
  """
  image = example["image"]
  h, w = image.shape[:2]
  boxes = np.asarray(example["boxes"], np.float64).reshape(-1, 4)
  with np.errstate(invalid="ignore"):
    proper = np.all(np.isfinite(boxes), axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  proper &= ~np.asarray(example["crowd"], bool)
  if not proper.any():
    return example
  options = (None, *min_ious, -np.inf)  # None: the whole image; -inf: no constraint
  for _ in range(max_rounds):
    min_iou = options[int(rng.integers(len(options)))]
    if min_iou is None:
      return example
    for _ in range(max_trials):
      cw, ch = rng.uniform(min_scale * w, w), rng.uniform(min_scale * h, h)
      fx, fy = rng.uniform(), rng.uniform()
      if not aspect_range[0] <= ch / cw <= aspect_range[1]:
        continue
      left, top = fx * (w - cw), fy * (h - ch)
      rect = np.array([int(left), int(top), int(left + cw), int(top + ch)], np.float64)
      if _iou_with(boxes[proper], rect).max() < min_iou:
        continue
      inside = centers_inside(boxes, rect)
      if not (inside & proper).any():
        continue
      return crop_example(example, rect.astype(int), inside)
  return example
