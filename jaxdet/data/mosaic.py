"""Mosaic (YOLOv4, Bochkovskiy et al. 2020): four training images tiled into one around a random centre."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxdet.data.geometric import (BOX_FIELDS, DEFAULT_FILL, MIN_SIZE, MIN_VISIBLE, as_size, compose_frame,
                                   draw_scale_crop, paste_affine, select_boxes, transform_boxes)
from jaxdet.data.source import Example


def mosaic(examples: Sequence[Example], size: int | Sequence[int], *, rng: np.random.Generator,
           center_range: tuple[float, float] = (0.25, 0.75), scale_range: tuple[float, float] | None = None,
           fill: int = DEFAULT_FILL, min_size: float = MIN_SIZE, min_visible: float = MIN_VISIBLE) -> Example:
  """Returns one `size` (h, w) example whose four quadrants show the four `examples`, with all their boxes.

  The centre `(cx, cy)` is uniform in `center_range` times the output size (whole pixels). Example k fills
  quadrant k (top-left, top-right, bottom-left, bottom-right): it is scaled, keeping its aspect ratio, just enough
  to cover the quadrant, and the quadrant shows a uniformly placed window of it. Boxes are mapped, clipped to
  their quadrant and kept by the rule of `jaxdet.data.geometric`. Darknet crops each image at random and
  Ultralytics pastes fixed-scale images at the centre on a 2x canvas; covering scaling keeps every pixel real
  image at the output resolution.

  With `scale_range`, the mosaic is then randomly scaled and cropped as by `random_scale_crop`, the two maps
  composed so that each output pixel is resampled once, straight from its source image (the quadrant borders are
  rounded to whole output pixels, for pixels and boxes alike); uncovered pixels get `fill`.

  `image_id`, `orig_size` and `frame` are those of `examples[0]` (its map composed in); `frame` is only meaningful
  for boxes that came from that image — Mosaic is a training transform, whose outputs are never evaluated.
  """
  if len(examples) != 4:
    raise ValueError(f"mosaic takes 4 examples, got {len(examples)}")
  h, w = as_size(size)
  cx = int(round(rng.uniform(*center_range) * w))
  cy = int(round(rng.uniform(*center_range) * h))
  k, (ox, oy) = 1.0, (0.0, 0.0)
  if scale_range is not None:
    k, (ox, oy) = draw_scale_crop(rng, source_hw=(h, w), size=(h, w), scale_range=scale_range)
  canvas = np.full((h, w, 3), fill, np.uint8)
  parts, first_frame = [], None
  for example, (x1, y1, x2, y2) in zip(examples, ((0, 0, cx, cy), (cx, 0, w, cy), (0, cy, cx, h), (cx, cy, w, h))):
    image = example["image"]
    ih, iw = image.shape[:2]
    qw, qh = x2 - x1, y2 - y1
    s = max(qw / iw, qh / ih)
    tx = x1 - rng.uniform() * (iw * s - qw)
    ty = y1 - rng.uniform() * (ih * s - qh)
    scale, offset = (s * k, s * k), (tx * k + ox, ty * k + oy)
    window = tuple(min(max(int(round(v * k + o)), 0), limit)
                   for v, o, limit in ((x1, ox, w), (y1, oy, h), (x2, ox, w), (y2, oy, h)))
    if window[2] > window[0] and window[3] > window[1]:
      paste_affine(canvas, image, scale=scale, offset=offset, window=window)
    boxes, keep = transform_boxes(example["boxes"], source_hw=(ih, iw), scale=scale, offset=offset,
                                  window=tuple(float(v) for v in window), min_size=min_size, min_visible=min_visible)
    parts.append(select_boxes({**example, "boxes": boxes}, keep))
    if first_frame is None:
      first_frame = compose_frame(example["frame"], scale=scale, offset=offset)
  out = dict(examples[0])
  for key in BOX_FIELDS:
    out[key] = np.concatenate([p[key] for p in parts], axis=0)
  out["image"] = canvas
  out["frame"] = first_frame
  return out
