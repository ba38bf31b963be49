"""DIoU-NMS (Zheng et al. 2020, "Distance-IoU Loss", sec. 4.3; YOLOv4's bag of specials): greedy NMS whose
suppression test subtracts the normalised centre distance from the IoU.

A kept box M suppresses a box B when IoU(M, B) - R(M, B)^beta > threshold, with R = rho^2(centres) / c^2, c the
diagonal of the smallest box enclosing both (the DIoU penalty; beta = 1 in the paper, darknet's `beta_nms`). Two
boxes that overlap as much as a duplicate but whose centres lie apart -- two nearby objects, one partly hiding the
other -- are then both kept, where plain NMS would drop one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.ops.iou import _EPS, iou_valid_box, pairwise_iou


def diou_suppression(box: jax.Array, boxes: jax.Array, *, beta: float = 1.0) -> jax.Array:
  """Returns float32 `[N]`: IoU(box, boxes_n) - (rho^2 / c^2)^beta, the DIoU-NMS score of `box [4]` against each of
  `boxes [N, 4]` (xyxy), and -inf where either box is degenerate (`iou_valid_box`: it never suppresses or is
  suppressed). rho^2 / c^2 uses torchvision's `distance_box_iou` arithmetic (its eps 1e-7 added to c^2)."""
  box = jnp.asarray(box, jnp.float32)
  boxes = jnp.asarray(boxes, jnp.float32)
  ok = iou_valid_box(box) & iou_valid_box(boxes)
  safe = jnp.where(ok[:, None], boxes, jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32))
  one = jnp.where(iou_valid_box(box), box, jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32))
  iou = pairwise_iou(one[None], safe)[0]
  wh_c = jnp.maximum(one[2:], safe[:, 2:]) - jnp.minimum(one[:2], safe[:, :2])
  diag2 = wh_c[:, 0] ** 2 + wh_c[:, 1] ** 2 + _EPS
  delta = (one[:2] + one[2:]) / 2 - (safe[:, :2] + safe[:, 2:]) / 2
  ratio = (delta[:, 0] ** 2 + delta[:, 1] ** 2) / diag2
  penalty = ratio if beta == 1.0 else jnp.power(ratio, beta)
  return jnp.where(ok, iou - penalty, -jnp.inf)


def _greedy(boxes, scores, classes, *, iou_threshold, max_outputs, score_threshold, beta):
  boxes = jax.lax.stop_gradient(jnp.asarray(boxes, jnp.float32))
  scores = jax.lax.stop_gradient(jnp.asarray(scores, jnp.float32))
  if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
    raise ValueError(f"diou_nms takes boxes [N, 4] and scores [N], got {boxes.shape} and {scores.shape}")
  if isinstance(iou_threshold, (int, float)) and not 0.0 <= iou_threshold <= 1.0:
    raise ValueError(f"diou_nms: iou_threshold must be in [0, 1], got {iou_threshold}")
  if beta <= 0:
    raise ValueError(f"diou_nms: beta must be positive, got {beta}")
  n = boxes.shape[0]
  if n == 0 or max_outputs == 0:
    return jnp.zeros((max_outputs,), jnp.int32), jnp.zeros((max_outputs,), bool)
  selectable = jnp.isfinite(scores) & jnp.all(jnp.isfinite(boxes), axis=-1)
  if score_threshold is not None:
    selectable &= scores > score_threshold
  boxes = jnp.where(selectable[:, None], boxes, 0.0)

  def best(remaining):  # argmax takes the first of equal scores: ties keep the lower index
    return jnp.argmax(jnp.where(remaining, scores, -jnp.inf)).astype(jnp.int32)

  def step(state):
    i, remaining, m, out = state
    hit = diou_suppression(boxes[m], boxes, beta=beta) > iou_threshold  # one row at a time: O(N) memory
    if classes is not None:
      hit &= classes == classes[m]
    remaining = remaining & ~hit
    remaining = remaining.at[m].set(False)
    return i + 1, remaining, best(remaining), out.at[i].set(m)

  def cond(state):
    i, remaining, m, _ = state
    return (i < max_outputs) & remaining[m]

  init = (jnp.int32(0), selectable, best(selectable), jnp.zeros((max_outputs,), jnp.int32))
  num, _, _, indices = jax.lax.while_loop(cond, step, init)
  return indices, jnp.arange(max_outputs) < num


def diou_nms(boxes: jax.Array, scores: jax.Array, *, iou_threshold: float, max_outputs: int,
             score_threshold: float | None = None, beta: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Returns `(indices, valid)`: int32 `[max_outputs]` kept indices in descending score order, and their mask.

  Greedy DIoU-NMS (module docstring): visit boxes by descending score (equal scores by input index), keep a box
  unless a kept box M has IoU(M, B) - (rho^2 / c^2)^beta strictly above `iou_threshold` with it. Boxes or scores
  that are not finite, and scores <= `score_threshold` when given, are never kept; degenerate boxes are kept by
  score and suppress nothing. Invalid output slots hold index 0. Jittable and vmappable; one pass over the N boxes
  per kept box (memory O(N)), stopping at `max_outputs` kept boxes. Same signature as `nms` plus `beta`.

  Args:
    boxes: `[N, 4]` xyxy. scores: `[N]`.
    iou_threshold: in [0, 1] (YOLOv4's darknet configs: 0.45).
    max_outputs: static output length.
    score_threshold: optional; boxes must score strictly above it.
    beta: the exponent on the distance penalty (1 in the paper; darknet's `beta_nms`, 0.6 in yolov4.cfg).
  """
  return _greedy(boxes, scores, None, iou_threshold=iou_threshold, max_outputs=max_outputs,
                 score_threshold=score_threshold, beta=beta)


def batched_diou_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array, *, iou_threshold: float,
                     max_outputs: int, score_threshold: float | None = None,
                     beta: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Returns `(indices, valid)` of class-aware DIoU-NMS: as `diou_nms`, but boxes suppress only boxes of their own
  class (`classes`: int `[N]`); one score-ordered pass over all classes, so the output is in descending score
  order across classes, as `batched_nms`'s."""
  return _greedy(boxes, scores, jnp.asarray(classes, jnp.int32), iou_threshold=iou_threshold,
                 max_outputs=max_outputs, score_threshold=score_threshold, beta=beta)
