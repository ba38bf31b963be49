"""Box formats and elementary box geometry.

Every function takes boxes with coordinates on the last axis and any leading batch shape. The canonical format
is xyxy: `(x1, y1, x2, y2)` in absolute float32 pixels, continuous (a box from 0 to 10 is 10 wide, no "+1").
Degenerate boxes (non-positive width or height, NaN, inf) are representable; `is_valid_box` tells them apart and
`box_area` gives them area 0, so nothing downstream divides by a negative or NaN area. The format conversions,
`scale_boxes` and `flip_boxes` are affine maps: an empty box stays empty, and a NaN or inf coordinate gives NaN or
inf coordinates (they carry the input through; mask with `is_valid_box` before relying on the values).
`clip_boxes` maps inf into the image and keeps NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _f32(boxes: jax.Array) -> jax.Array:
  # Geometry is float32 even when a model computes in bfloat16 (CONVENTIONS: coordinates and shapes).
  return jnp.asarray(boxes, jnp.float32)


def xyxy_to_xywh(boxes: jax.Array) -> jax.Array:
  """Returns `[..., 4]` boxes as `(x1, y1, w, h)` (COCO's format) from `[..., 4]` xyxy boxes."""
  boxes = _f32(boxes)
  return jnp.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """Returns `[..., 4]` xyxy boxes from `[..., 4]` `(x1, y1, w, h)` boxes."""
  boxes = _f32(boxes)
  return jnp.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """Returns `[..., 4]` boxes as `(cx, cy, w, h)` from `[..., 4]` xyxy boxes."""
  boxes = _f32(boxes)
  size = boxes[..., 2:] - boxes[..., :2]
  return jnp.concatenate([boxes[..., :2] + 0.5 * size, size], axis=-1)


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """Returns `[..., 4]` xyxy boxes from `[..., 4]` `(cx, cy, w, h)` boxes."""
  boxes = _f32(boxes)
  half = 0.5 * boxes[..., 2:]
  return jnp.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def is_valid_box(boxes: jax.Array) -> jax.Array:
  """Returns bool `[...]`: the xyxy box is finite and has positive width and height."""
  boxes = _f32(boxes)
  finite = jnp.all(jnp.isfinite(boxes), axis=-1)
  return finite & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def box_area(boxes: jax.Array) -> jax.Array:
  """Returns `[...]` areas of `[..., 4]` xyxy boxes; 0 for degenerate boxes (never negative or NaN)."""
  boxes = _f32(boxes)
  valid = is_valid_box(boxes)
  safe = jnp.where(valid[..., None], boxes, 0.0)
  return jnp.where(valid, (safe[..., 2] - safe[..., 0]) * (safe[..., 3] - safe[..., 1]), 0.0)


def clip_boxes(boxes: jax.Array, *, height: float | jax.Array, width: float | jax.Array) -> jax.Array:
  """Returns `[..., 4]` xyxy boxes clipped to the image `[0, width] x [0, height]`.

  `height` and `width` may be traced scalars (or broadcastable arrays) so per-image sizes work under `vmap`.
  """
  boxes = _f32(boxes)
  x = jnp.clip(boxes[..., 0::2], 0.0, jnp.asarray(width, jnp.float32)[..., None])
  y = jnp.clip(boxes[..., 1::2], 0.0, jnp.asarray(height, jnp.float32)[..., None])
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def scale_boxes(boxes: jax.Array, *, sx: float | jax.Array, sy: float | jax.Array) -> jax.Array:
  """Returns `[..., 4]` xyxy boxes with x coordinates multiplied by `sx` and y by `sy` (an image resize)."""
  boxes = _f32(boxes)
  factors = jnp.stack(jnp.broadcast_arrays(
      jnp.asarray(sx, jnp.float32), jnp.asarray(sy, jnp.float32),
      jnp.asarray(sx, jnp.float32), jnp.asarray(sy, jnp.float32)), axis=-1)
  return boxes * factors


def flip_boxes(boxes: jax.Array, *, width: float | jax.Array) -> jax.Array:
  """Returns `[..., 4]` xyxy boxes mirrored left-right in an image `width` pixels wide.

  A pixel column `j` maps to `width - 1 - j`, so the continuous coordinate `x` maps to `width - x` and the box
  `(x1, x2)` becomes `(width - x2, width - x1)`.
  """
  boxes = _f32(boxes)
  width = jnp.asarray(width, jnp.float32)
  return jnp.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], axis=-1)
