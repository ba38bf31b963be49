"""The IoU family: IoU, GIoU, DIoU and CIoU, pairwise and element-wise.

References:
  IoU / Jaccard index; GIoU: Rezatofighi et al., "Generalized Intersection over Union", CVPR 2019;
  DIoU and CIoU: Zheng et al., "Distance-IoU Loss", AAAI 2020.
The arithmetic follows torchvision's `box_iou`, `generalized_box_iou`, `distance_box_iou` and `complete_box_iou`
operation for operation (including their `eps=1e-7` in DIoU/CIoU), so valid boxes give the same float32 numbers.
Gradients are those of these functions, CIoU's trade-off alpha = v / (1 - IoU + v) included (torchvision's
`complete_box_iou` holds alpha constant; `jaxdet.ops.ciou_loss` does so too, as the paper's loss does).

Differs from torchvision on degenerate boxes: torchvision returns whatever the arithmetic gives (negative areas,
NaN); here any pair with a degenerate box scores 0 for every kind, with a zero and finite gradient (CONVENTIONS:
"IoU with a degenerate box is 0"). Degenerate means `iou_valid_box` is False: empty, inverted, NaN or inf, and also
a side under 1e-4 px or a coordinate beyond 1e8 px, where float32 gradients would overflow (1 / union^2 underflows
for a 1e-5 px box; GIoU's enclosing area squared overflows for 1e10 px ones). No image has boxes like that.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("iou", "giou", "diou", "ciou")
MIN_SIDE = 1e-4  # px: smaller boxes are degenerate here (module docstring).
MAX_COORD = 1e8  # px: so are boxes reaching further from the origin.
_EPS = 1e-7  # torchvision's eps in distance_box_iou / complete_box_iou.
_UNIT_BOX = np.array([0.0, 0.0, 1.0, 1.0], np.float32)


def iou_valid_box(boxes: jax.Array) -> jax.Array:
  """Returns bool `[...]`: the xyxy box `[..., 4]` is one the IoU family scores (finite, both sides >= `MIN_SIDE`,
  every coordinate within +-`MAX_COORD` pixels); for any other box every IoU kind is 0 with a zero gradient."""
  boxes = jnp.asarray(boxes, jnp.float32)
  inside = jnp.all(jnp.abs(boxes) <= MAX_COORD, axis=-1)  # False for NaN and inf too
  return inside & (boxes[..., 2] - boxes[..., 0] >= MIN_SIDE) & (boxes[..., 3] - boxes[..., 1] >= MIN_SIDE)


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
  valid = iou_valid_box(boxes)
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
