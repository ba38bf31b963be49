"""IoU-Net on Faster R-CNN (+ FPN) (Jiang et al. 2018; course A*, B*): localisation confidence trained end to end.

Composition: `FasterRCNN` (backbone, FPN, RPN, RoI minibatch, RoI Align box head: unchanged) plus an IoU branch
(`heads/iou_net.py`: Precise RoI Pooling of a box on its FPN level -> two FC layers -> a sigmoid IoU per class).
Training adds the branch's loss on jittered ground truth (`jitter_boxes`: IoU > 0.5, uniform over IoU; smooth L1
to the true IoU) to the Faster R-CNN loss; its gradient reaches the shared backbone and FPN. Deliberate
difference: the paper pools the R-CNN branch with PrRoI Pooling too; here the box head keeps the baseline's RoI
Align, so that the ablation against Faster R-CNN + FPN changes one thing, the IoU branch.

Inference (all inside the module, since both IoU-guided NMS and refinement evaluate the branch on new boxes):
per image, the `pre_nms_top_k` best (RoI, class) pairs above `score_threshold` (class-specific boxes), then
- `iou_nms=True`: IoU-guided NMS per class (rank by the predicted IoU of each box for its class; a kept box takes
  the best classification score of the boxes it suppresses), else standard NMS per class; the best
  `max_detections` by score;
- `refine=True`: Algorithm 2 on those detections (`refine_boxes`: `refine_steps` rounds of scale-normalised
  gradient ascent on the predicted IoU through PrRoI Pooling, step `refine_step_size`, early stop by
  `refine_omega1` / `refine_omega2`).
The four switches give the ablation's variants from one trained checkpoint (`--config.model.iou_nms=False`, ...).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdet.models.detector import Detections, Detector
from jaxdet.models.detectors.faster_rcnn import FPN_STRIDES, FasterRCNN, faster_rcnn_loss, make_assign
from jaxdet.models.heads.iou_net import IoUHead, class_iou, iou_head_loss, jitter_boxes, refine_boxes
from jaxdet.models.heads.roi_box import ROI_WEIGHTS
from jaxdet.models.rescoring import select_per_class, top_candidates
from jaxdet.ops.boxes import clip_boxes
from jaxdet.ops.coders import decode_boxes
from jaxdet.ops.prroi_dense import multilevel_prroi_pool, prroi_pool_image


class IoUNetRCNN(FasterRCNN):
  """Returns Faster R-CNN's outputs plus, in training, `iou_targets` (`jitter_boxes`'s dict, `[B, S, ...]`) and
  `iou_pred [B, S, C]`; in inference, the detections `det_boxes [B, D, 4]`, `det_scores`, `det_classes`,
  `det_valid` and `det_iou` (the predicted IoU of each detection for its class, after refinement when on)."""

  iou_features: int = 1024
  iou_pool_size: int = 7
  iou_samples: int = 64
  iou_jitters: int = 64
  score_threshold: float = 0.05
  nms_threshold: float = 0.5
  max_detections: int = 100
  pre_nms_top_k: int = 300
  iou_nms: bool = True
  refine: bool = False
  refine_steps: int = 5
  refine_step_size: float = 0.02
  refine_omega1: float = 0.001
  refine_omega2: float = -0.01

  def _iou_pool(self, maps: list[jax.Array], boxes: jax.Array, valid: jax.Array) -> jax.Array:
    """`[S, p, p, D]` PrRoI-pooled features of one image's boxes `[S, 4]` (FPN: each on its level)."""
    if self.fpn:
      return multilevel_prroi_pool(maps[:4], boxes, output_size=self.iou_pool_size, strides=FPN_STRIDES[:4],
                                   canonical_size=self.canonical_size, valid=valid)
    return prroi_pool_image(maps[0], boxes, output_size=self.iou_pool_size, spatial_scale=1 / 16, valid=valid)

  def _predict_iou(self, head, maps, boxes, classes, valid):
    """`[B, N]` predicted IoU of boxes `[B, N, 4]` for their classes; `head` is a module or a pure function."""
    pooled = jax.vmap(self._iou_pool)(maps, boxes, valid)
    b, n = boxes.shape[:2]
    return class_iou(head(pooled.reshape(b * n, *pooled.shape[2:])).reshape(b, n, -1), classes)

  def _extend(self, maps, out, *, train, targets, image_shape):
    head = IoUHead(self.num_classes, features=self.iou_features, dtype=self.dtype, name="iou_head")
    if train:
      key = self.make_rng("sampling")
      keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(targets["boxes"].shape[0]))
      jittered = jax.vmap(lambda b, l, v, c, k: jitter_boxes(b, l, v, c, key=k, num_samples=self.iou_samples,
                                                               num_candidates=self.iou_jitters))(
          targets["boxes"], targets["labels"], targets["valid"], targets["crowd"], keys)
      pooled = jax.vmap(self._iou_pool)(maps, jittered["boxes"], jittered["valid"])
      b, s = jittered["valid"].shape
      predicted = head(pooled.reshape(b * s, *pooled.shape[2:])).reshape(b, s, -1)
      return out | {"iou_targets": jittered, "iou_pred": predicted}
    return out | self._detect(head, maps, out, image_shape)

  def _detect(self, head, maps, out, image_shape):
    scores = jax.nn.softmax(out["roi_logits"], axis=-1)[..., 1:] * out["roi_valid"][..., None]
    boxes = decode_boxes(out["roi_deltas"], out["rois"][..., None, :], weights=ROI_WEIGHTS)
    cand = jax.vmap(lambda b, s: top_candidates(b, s, top_k=self.pre_nms_top_k, score_threshold=self.score_threshold,
                                                image_shape=image_shape))(boxes, scores)
    select = lambda c, loc: select_per_class(  # noqa: E731
        c, num_classes=self.num_classes, method="iou_guided" if self.iou_nms else "nms",
        iou_threshold=self.nms_threshold, max_outputs=self.max_detections, localization=loc)
    # IoU-guided NMS needs every candidate's predicted IoU; standard NMS only the kept boxes'.
    localization = self._predict_iou(head, maps, cand.boxes, cand.classes, cand.valid) if self.iou_nms else None
    keep, det_scores, det_valid = jax.vmap(select)(cand, localization)
    take = lambda x: jnp.take_along_axis(x, keep.reshape(keep.shape + (1,) * (x.ndim - 2)), axis=1)  # noqa: E731
    det_boxes, det_classes = take(cand.boxes), take(cand.classes)
    det_iou = (take(localization) if self.iou_nms else
               self._predict_iou(head, maps, det_boxes, det_classes, det_valid))
    if self.refine and not self.is_initializing():
      params = head.variables["params"]
      pure_head = lambda pooled: head.clone(parent=None).apply({"params": params}, pooled)  # noqa: E731
      b, d = det_valid.shape

      def iou_fn(flat):
        return self._predict_iou(pure_head, maps, flat.reshape(b, d, 4), det_classes, det_valid).reshape(-1)

      refined, iou, _ = refine_boxes(iou_fn, det_boxes.reshape(-1, 4), det_valid.reshape(-1),
                                     steps=self.refine_steps, step_size=self.refine_step_size,
                                     omega1=self.refine_omega1, omega2=self.refine_omega2, image_shape=image_shape)
      det_boxes, det_iou = refined.reshape(b, d, 4), iou.reshape(b, d)
    return {"det_boxes": jnp.where(det_valid[..., None], det_boxes, 0.0), "det_scores": det_scores,
            "det_classes": jnp.where(det_valid, det_classes, 0), "det_valid": det_valid,
            "det_iou": jnp.where(det_valid, det_iou, 0.0)}


def iou_net_loss(outputs: dict[str, Any], targets: dict[str, jax.Array], *, stage: str = "joint",
                 iou_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: `faster_rcnn_loss` plus `iou_weight` x the IoU branch's loss (stages joint / rcnn).

  Also reported: `iou_loss` and `iou_error`, the mean absolute error of the predicted IoU on the jittered boxes.
  """
  loss, metrics = faster_rcnn_loss(outputs, targets, stage=stage)
  if "iou_pred" in outputs:
    t = outputs["iou_targets"]
    branch = iou_head_loss(outputs["iou_pred"], t["labels"], t["iou"], t["valid"])
    error = jnp.abs(class_iou(outputs["iou_pred"], t["labels"]) - t["iou"])
    metrics |= {"iou_loss": branch, "iou_error": jnp.sum(jnp.where(t["valid"], error, 0.0)) / jnp.maximum(
        jnp.sum(t["valid"]), 1).astype(jnp.float32)}
    if stage in ("joint", "rcnn"):
      loss = loss + iou_weight * branch
  metrics["loss"] = loss
  return loss, metrics


def build_faster_rcnn_iounet(*, num_classes: int, iou_loss_weight: float = 1.0, rpn_allowed_border: float = 0.0,
                             **options: Any) -> Detector:
  """Returns the IoU-Net `Detector`; `options` are `IoUNetRCNN`'s attributes (Faster R-CNN's and the IoU branch's,
  the inference switches included). `assign` is Faster R-CNN's; `postprocess` reads the module's detections."""
  if "dtype" in options:
    options["dtype"] = jnp.dtype(options["dtype"])
  module = IoUNetRCNN(num_classes=num_classes, **options)

  def loss(outputs, targets):
    return iou_net_loss(outputs, targets, stage=module.stage, iou_weight=iou_loss_weight)

  def postprocess(outputs, image_shape=None):
    boxes = outputs["det_boxes"]
    if image_shape is not None:
      boxes = clip_boxes(boxes, height=image_shape[0], width=image_shape[1])
    return Detections(boxes=boxes, scores=outputs["det_scores"], classes=outputs["det_classes"],
                      valid=outputs["det_valid"])

  return Detector(module=module, assign=make_assign(module, rpn_allowed_border=rpn_allowed_border), loss=loss,
                  postprocess=postprocess, num_classes=num_classes)
