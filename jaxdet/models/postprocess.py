"""Fixed-size detections from dense per-anchor (or per-RoI) class scores and boxes: the inference step shared by
RetinaNet, FCOS, SSD, YOLO and the RoI heads of two-stage detectors.

Per image: on each pyramid level, the `candidates_per_level` highest (anchor, class) scores; of those, the ones
scoring strictly above `score_threshold` whose box is not empty after clipping; class-aware NMS; the best
`max_detections` (RetinaNet's inference, Lin et al. 2017 sec. 4; torchvision's `RetinaNet.postprocess_detections`
and `RoIHeads.postprocess_detections` do the same steps). With `per_class`, the candidates are the
`candidates_per_level` best anchors of each class on each level instead (SSD's inference: per class, the top 200
above 0.01, then NMS; torchvision's `SSD.postprocess_detections`). `nms="diou"` replaces the NMS by class-aware
DIoU-NMS (YOLOv4; `jaxdet.ops.diou_nms`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdet.models.detector import Detections
from jaxdet.ops.boxes import clip_boxes
from jaxdet.ops.diou_nms import batched_diou_nms
from jaxdet.ops.nms import batched_nms

NMS_KINDS = ("iou", "diou")


def _select_one(boxes: jax.Array, scores: jax.Array, *, level_sizes: Sequence[int], candidates_per_level: int,
                per_class: bool, score_threshold: float, iou_threshold: float, max_detections: int,
                image_shape: tuple[int, int] | None, nms: str, diou_beta: float) -> Detections:
  num_classes = scores.shape[-1]
  top_scores, anchors, classes = [], [], []
  start = 0
  for size in level_sizes:
    if per_class:  # [C, k]: each class's best anchors on this level
      values, index = jax.lax.top_k(scores[start:start + size].T, min(candidates_per_level, size))
      top_scores.append(values.reshape(-1))
      anchors.append(start + index.reshape(-1))
      classes.append(jnp.repeat(jnp.arange(num_classes), index.shape[1]))
    else:
      level = scores[start:start + size].reshape(-1)
      values, flat = jax.lax.top_k(level, min(candidates_per_level, level.shape[0]))
      top_scores.append(values)
      anchors.append(start + flat // num_classes)
      classes.append(flat % num_classes)
    start += size
  top_scores, anchors, classes = (jnp.concatenate(x) for x in (top_scores, anchors, classes))
  picked = boxes[anchors, classes] if boxes.ndim == 3 else boxes[anchors]
  if image_shape is not None:
    picked = clip_boxes(picked, height=image_shape[0], width=image_shape[1])
  nonempty = (picked[:, 2] > picked[:, 0]) & (picked[:, 3] > picked[:, 1])
  top_scores = jnp.where(nonempty, top_scores, -jnp.inf)  # never selectable
  if nms == "diou":
    keep, valid = batched_diou_nms(picked, top_scores, classes, iou_threshold=iou_threshold,
                                   max_outputs=max_detections, score_threshold=score_threshold, beta=diou_beta)
  else:
    keep, valid = batched_nms(picked, top_scores, classes, iou_threshold=iou_threshold,
                              max_outputs=max_detections, score_threshold=score_threshold)
  return Detections(boxes=jnp.where(valid[:, None], picked[keep], 0.0),
                    scores=jnp.where(valid, top_scores[keep], 0.0),
                    classes=jnp.where(valid, classes[keep], 0).astype(jnp.int32), valid=valid)


def select_detections(boxes: jax.Array, scores: jax.Array, *, level_sizes: Sequence[int] | None = None,
                      candidates_per_level: int = 1000, per_class: bool = False, score_threshold: float = 0.05,
                      iou_threshold: float = 0.5, max_detections: int = 100,
                      image_shape: tuple[int, int] | None = None, nms: str = "iou",
                      diou_beta: float = 1.0) -> Detections:
  """Returns `Detections` with `max_detections` slots per image from dense scores and decoded boxes.

  Args:
    boxes: `[B, N, 4]` xyxy input pixels, one box per anchor (class-agnostic: RetinaNet, FCOS, SSD, YOLO), or
      `[B, N, C, 4]`, one per anchor and class (class-specific regression: Fast / Faster R-CNN).
    scores: `[B, N, C]` class probabilities (sigmoid or softmax without the background column).
    level_sizes: the number of anchors of each pyramid level, in the order of N (sum = N); None is one level.
    candidates_per_level: (anchor, class) pairs kept per level before thresholding and NMS (RetinaNet: 1,000), or
      with `per_class` anchors kept per class and level (SSD: 200).
    per_class: take the candidates per class (SSD) rather than over all (anchor, class) pairs of a level.
    score_threshold: a pair must score strictly above this (RetinaNet: 0.05).
    iou_threshold: class-aware NMS threshold (0.5); a box suppresses only boxes of its class.
    max_detections: slots per image (COCO: 100).
    image_shape: (h, w) to clip boxes to; boxes that are empty after clipping are dropped.
    nms: "iou" (greedy NMS, `batched_nms`) or "diou" (DIoU-NMS, `batched_diou_nms`, with exponent `diou_beta`).

  Invalid slots hold zeros. Jittable; the per-image work is vmapped.
  """
  if nms not in NMS_KINDS:
    raise ValueError(f"nms must be one of {NMS_KINDS}, got {nms!r}")
  n = scores.shape[1]
  level_sizes = (n,) if level_sizes is None else tuple(int(s) for s in level_sizes)
  if sum(level_sizes) != n:
    raise ValueError(f"level_sizes {level_sizes} sum to {sum(level_sizes)}, but there are {n} anchors")
  if boxes.shape[:2] != scores.shape[:2] or boxes.shape[-1] != 4 or boxes.ndim not in (3, 4):
    raise ValueError(f"boxes {boxes.shape} must be [B, N, 4] or [B, N, C, 4] for scores {scores.shape}")

  def one(b, s):
    return _select_one(b.astype(jnp.float32), s.astype(jnp.float32), level_sizes=level_sizes,
                       candidates_per_level=candidates_per_level, per_class=per_class, score_threshold=score_threshold,
                       iou_threshold=iou_threshold, max_detections=max_detections, image_shape=image_shape,
                       nms=nms, diou_beta=diou_beta)

  return jax.vmap(one)(boxes, scores)
