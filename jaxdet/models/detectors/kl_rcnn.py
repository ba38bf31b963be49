"""Faster R-CNN (+ FPN) with KL-Loss and Softer-NMS (He et al. 2019, "Bounding Box Regression with Uncertainty for
Accurate Object Detection"; course A*).

Composition: `FasterRCNN` unchanged up to the RoI box head, whose regressor predicts corner offsets
(`encode_corners`, the paper's eq. 1) and, from a third sibling layer, their log-variances
(`TwoFCHead(box_variance=True)`, Gaussian init std 0.0001). Loss: the RPN's terms and the head's classification as
Faster R-CNN, and the KL loss (`kl_box_loss`) for the box regression (`box_loss="smooth_l1"` trains the same corner
regressor with smooth L1 instead and leaves the variances untrained: the control for the loss alone). Inference
(`decode_kl_detections`): per-class NMS or Soft-NMS (`soft_nms`), then variance voting (`variance_voting`,
`voting_sigma` = the paper's sigma_t). All inference options are switches of one trained checkpoint.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.detector import Detector
from jaxdet.models.detectors.faster_rcnn import FasterRCNN, faster_rcnn_loss, make_assign
from jaxdet.models.heads.kl_box import CORNER_WEIGHTS, decode_kl_detections, kl_box_loss
from jaxdet.models.heads.roi_box import ResNetC5Head, TwoFCHead
from jaxdet.ops.coders import encode_corners
from jaxdet.ops.losses import smooth_l1_loss, softmax_cross_entropy

BOX_LOSSES = ("kl", "smooth_l1")


class KLFasterRCNN(FasterRCNN):
  """Returns Faster R-CNN's outputs, with `roi_deltas` the corner offsets and `roi_log_variance [B, S, C, 4]`."""

  def _box_head(self) -> nn.Module:
    if self.head == "c5":
      return ResNetC5Head(self.num_classes, features=self.width * 8, box_variance=True, dtype=self.dtype,
                          name="roi_head")
    return TwoFCHead(self.num_classes, features=self.head_features, dropout=self.head_dropout, box_variance=True,
                     dtype=self.dtype, name="roi_head")


def corner_targets(outputs: dict[str, Any], targets: dict[str, jax.Array]) -> jax.Array:
  """Returns `[B, S, 4]` corner regression targets of the sampled RoIs (zero for background)."""
  t = outputs["roi_targets"]
  gt = jnp.take_along_axis(targets["boxes"], t["matched"][..., None], axis=1)
  deltas = encode_corners(gt, t["rois"], weights=CORNER_WEIGHTS)
  return jnp.where((t["valid"] & (t["labels"] > 0))[..., None], deltas, 0.0)


def kl_rcnn_loss(outputs: dict[str, Any], targets: dict[str, jax.Array], *, stage: str = "joint",
                 box_loss: str = "kl") -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: `faster_rcnn_loss` with the RoI head's regression term replaced by the KL loss on
  corner offsets (or smooth L1 on them, `box_loss="smooth_l1"`), normalised as Faster R-CNN's (by the sampled
  RoIs). Reported besides: `roi_log_variance`, the mean predicted alpha of the foreground RoIs' own class."""
  if box_loss not in BOX_LOSSES:
    raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
  rpn_only = {k: v for k, v in outputs.items() if not k.startswith("roi_")}
  loss, metrics = faster_rcnn_loss(rpn_only, targets, stage=stage)
  if "roi_targets" in outputs:
    t = outputs["roi_targets"]
    num = jnp.maximum(jnp.sum(t["valid"]), 1).astype(jnp.float32)
    cls = jnp.sum(jnp.where(t["valid"], softmax_cross_entropy(outputs["roi_logits"], t["labels"]), 0.0)) / num
    target = corner_targets(outputs, targets)
    foreground = t["valid"] & (t["labels"] > 0)
    own = lambda x: jnp.take_along_axis(x, jnp.maximum(t["labels"] - 1, 0)[..., None, None], axis=-2)[..., 0, :]  # noqa
    if box_loss == "kl":
      reg = kl_box_loss(outputs["roi_deltas"], outputs["roi_log_variance"], t["labels"], target, t["valid"])
    else:
      per_roi = jnp.sum(smooth_l1_loss(own(outputs["roi_deltas"]) - target, beta=1.0), axis=-1)
      reg = jnp.sum(jnp.where(foreground, per_roi, 0.0)) / num
    alpha = jnp.sum(jnp.where(foreground[..., None], own(outputs["roi_log_variance"]), 0.0))
    metrics |= {"roi_cls_loss": cls, "roi_box_loss": reg, "roi_foreground": jnp.sum(foreground).astype(jnp.float32),
                "roi_log_variance": alpha / jnp.maximum(4 * jnp.sum(foreground), 1).astype(jnp.float32)}
    if stage in ("joint", "rcnn"):
      loss = loss + cls + reg
  metrics["loss"] = loss
  return loss, metrics


def build_faster_rcnn_kl(*, num_classes: int, box_loss: str = "kl", score_threshold: float = 0.05,
                         nms_threshold: float = 0.5, max_detections: int = 100, pre_nms_top_k: int = 1000,
                         soft_nms: bool = False, soft_nms_sigma: float = 0.5, variance_voting: bool = True,
                         voting_sigma: float = 0.02, rpn_allowed_border: float = 0.0, **options: Any) -> Detector:
  """Returns the KL-Loss `Detector`; `options` are `FasterRCNN`'s attributes. The inference switches: `soft_nms`
  (Gaussian, `soft_nms_sigma`) instead of NMS at `nms_threshold`, and `variance_voting` with `voting_sigma`."""
  if box_loss not in BOX_LOSSES:
    raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
  if "dtype" in options:
    options["dtype"] = jnp.dtype(options["dtype"])
  module = KLFasterRCNN(num_classes=num_classes, **options)

  def loss(outputs, targets):
    return kl_rcnn_loss(outputs, targets, stage=module.stage, box_loss=box_loss)

  def postprocess(outputs, image_shape=None):
    return decode_kl_detections(outputs["rois"], outputs["roi_valid"], outputs["roi_logits"], outputs["roi_deltas"],
                                outputs["roi_log_variance"], image_shape=image_shape, score_threshold=score_threshold,
                                iou_threshold=nms_threshold, max_detections=max_detections,
                                pre_nms_top_k=pre_nms_top_k, soft_nms=soft_nms, soft_nms_sigma=soft_nms_sigma,
                                voting=variance_voting, sigma_t=voting_sigma)

  return Detector(module=module, assign=make_assign(module, rpn_allowed_border=rpn_allowed_border), loss=loss,
                  postprocess=postprocess, num_classes=num_classes)
