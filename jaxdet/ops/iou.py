"""The IoU family: IoU, GIoU, DIoU and CIoU, pairwise and element-wise.

References:
  IoU / Jaccard index; GIoU: Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019;
  DIoU and CIoU: Zheng et al., "Distance-IoU Loss", AAAI 2020.
The arithmetic follows torchvision's `box_iou`, `generalized_box_iou`, `distance_box_iou` and `complete_box_iou`
operation for operation (including their `eps=1e-7` in DIoU/CIoU), so valid boxes give the same float32 numbers.

Differs from torchvision on degenerate boxes (empty, inverted, NaN or inf): torchvision returns whatever the
arithmetic gives (negative areas, NaN); here any pair with a degenerate box scores 0 for every kind, with a zero
and finite gradient (CONVENTIONS: "IoU with a degenerate box is 0").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdet.ops.boxes import is_valid_box

KINDS = ("iou", "giou", "diou", "ciou")
_EPS = 1e-7  # torchvision's eps in distance_box_iou / complete_box_iou.
_UNIT_BOX = jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32)


def _aligned(b1: jax.Array, b2: jax.Array, kind: str) -> jax.Array:
  """IoU of kind `kind` between broadcast-compatible xyxy boxes b1, b2 (all valid)."""
  area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
  area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
  lt = jnp.maximum(b1[..., :2], b2[..., :2])
  rb = jnp.minimum(b1[..., 2:], b2[..., 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = area1 + area2 - inter
  iou = inter / union
  if kind == "iou":
    return iou
  lt_c = jnp.minimum(b1[..., :2], b2[..., :2])
  rb_c = jnp.maximum(b1[..., 2:], b2[..., 2:])
  wh_c = rb_c - lt_c
  if kind == "giou":
    area_c = wh_c[..., 0] * wh_c[..., 1]
    return iou - (area_c - union) / area_c
  diag2 = wh_c[..., 0] ** 2 + wh_c[..., 1] ** 2 + _EPS
  c1 = (b1[..., :2] + b1[..., 2:]) / 2
  c2 = (b2[..., :2] + b2[..., 2:]) / 2
  dist2 = (c1[..., 0] - c2[..., 0]) ** 2 + (c1[..., 1] - c2[..., 1]) ** 2
  diou = iou - dist2 / diag2
  if kind == "diou":
    return diou
  w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1]
  w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1]
  v = (4 / math.pi**2) * (jnp.arctan(w1 / h1) - jnp.arctan(w2 / h2)) ** 2
  alpha = v / (1 - iou + v + _EPS)
  return diou - alpha * v


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _safe(boxes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Float32 boxes with degenerate ones replaced by a unit box (so no NaN flows into gradients), and validity."""
  boxes = jnp.asarray(boxes, jnp.float32)
  valid = is_valid_box(boxes)
  return jnp.where(valid[..., None], boxes, _UNIT_BOX), valid


def elementwise_iou(boxes1: jax.Array, boxes2: jax.Array, *, kind: str = "iou") -> jax.Array:
  """Returns `[...]` IoU of `kind` between aligned pairs of boxes.

  Args:
    boxes1: `[..., 4]` xyxy pixels.
    boxes2: `[..., 4]` xyxy pixels, broadcast-compatible with `boxes1`.
    kind: "iou" in [0, 1], "giou" in [-1, 1], "diou" in (-1, 1], "ciou" in (-1.5, 1] (the metrics, not losses).

  Returns:
    The broadcast shape without the last axis, float32; 0 where either box is degenerate.
  """
  _check_kind(kind)
  b1, v1 = _safe(boxes1)
  b2, v2 = _safe(boxes2)
  return jnp.where(v1 & v2, _aligned(b1, b2, kind), 0.0)


def pairwise_iou(boxes1: jax.Array, boxes2: jax.Array, *, kind: str = "iou") -> jax.Array:
  """Returns `[..., N, M]` IoU of `kind` between every box of `boxes1 [..., N, 4]` and `boxes2 [..., M, 4]`.

  Equal to torchvision's `box_iou` / `generalized_box_iou` / `distance_box_iou` / `complete_box_iou` for valid
  xyxy boxes; 0 for pairs with a degenerate box. Leading batch dimensions must match (or use `jax.vmap`).
  """
  _check_kind(kind)
  b1, v1 = _safe(boxes1)
  b2, v2 = _safe(boxes2)
  values = _aligned(b1[..., :, None, :], b2[..., None, :, :], kind)
  return jnp.where(v1[..., :, None] & v2[..., None, :], values, 0.0)
