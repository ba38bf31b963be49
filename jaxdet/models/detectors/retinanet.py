"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection"): anchors on an FPN, trained with focal loss.

Composition: ResNet -> FPN (`ResNetFPN`, levels `min_level..max_level`; the levels above C5 from a stride-2
convolution on C5 as in the paper, or on P5 as detectron2 and torchvision's v2, `fpn_extra`) -> class and box
subnets shared across levels (`RetinaNetHead`). A anchors per cell (`jaxdet.ops.retinanet_anchors`).

- `assign` (on device, per image, vmapped): IoU >= 0.5 with a ground truth makes an anchor positive, IoU < 0.4
  negative, the band in between ignored (`jaxdet.ops.match_boxes`); with `allow_low_quality_matches` every ground
  truth's best anchors are positive too (torchvision and detectron2 do this, the paper does not say). Anchors covered
  by a crowd box are ignored, and crowd boxes are never matched. Box targets: the Faster R-CNN coder, weights 1.
- `loss`: sigmoid focal loss (alpha, gamma) summed over every class of every non-ignored anchor, plus the
  smooth-L1 loss (beta; 0 is L1, as torchvision) of the positives' deltas summed over coordinates; both divided by
  the batch's number of positive anchors (at least 1). Detectron2 divides by an exponential moving average of that
  number instead; that would need state carried between steps, which the detector contract keeps pure.
- `postprocess`: sigmoid scores; per level the 1,000 best (anchor, class) pairs scoring above 0.05; their boxes
  decoded and clipped; class-aware NMS at 0.5; the best 100 (`jaxdet.models.postprocess.select_detections`).
Anchor centres follow jaxdet's convention, ((j + 0.5) s, (i + 0.5) s); torchvision and detectron2 put them at
(j s, i s).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.detector import Detector
from jaxdet.models.detectors.pyramid import (ResNetFPN, check_image_shape, check_num_rows, flatten_levels,
                                             pyramid_shapes)
from jaxdet.models.heads.retinanet import RetinaNetHead
from jaxdet.models.postprocess import select_detections
from jaxdet.ops.anchors import retinanet_anchors
from jaxdet.ops.coders import decode_boxes, encode_boxes
from jaxdet.ops.losses import sigmoid_focal_loss, smooth_l1_loss
from jaxdet.ops.matching import FOREGROUND, IGNORE, match_boxes


class RetinaNet(nn.Module):
  """Returns the head outputs (`RetinaNetHead`: per-level logits and deltas) for images `[B, H, W, 3]`.

  H and W must be multiples of 32. `targets` (given in training by the `Detector` contract) is not used.
  """

  num_classes: int
  num_anchors: int = 9
  depth: int = 18
  width: int = 64
  fpn_features: int = 256
  head_features: int = 256
  num_convs: int = 4
  min_level: int = 3
  max_level: int = 7
  fpn_extra: str = "conv_c5"
  prior_prob: float = 0.01
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    pyramid = ResNetFPN(depth=self.depth, width=self.width, fpn_features=self.fpn_features,
                        min_level=self.min_level, max_level=self.max_level, extra=self.fpn_extra, dtype=self.dtype,
                        name="body")(images, train=train)
    return RetinaNetHead(self.num_classes, num_anchors=self.num_anchors, features=self.head_features,
                         num_convs=self.num_convs, prior_prob=self.prior_prob, dtype=self.dtype,
                         name="head")(pyramid)


def retinanet_targets(anchors: jax.Array, boxes: jax.Array, labels: jax.Array, valid: jax.Array, crowd: jax.Array, *,
                      fg_iou: float = 0.5, bg_iou: float = 0.4, allow_low_quality_matches: bool = False,
                      weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> dict[str, jax.Array]:
  """Returns one image's RetinaNet targets (vmap for a batch).

  Args:
    anchors: `[N, 4]` xyxy pixels; boxes: `[M, 4]` xyxy pixels; labels: int `[M]`; valid, crowd: bool `[M]`.

  Returns a dict of
    match: int32 `[N]`: 1 positive (IoU >= fg_iou, or a ground truth's best anchor with
      `allow_low_quality_matches`), 0 negative (IoU < bg_iou), -1 ignored (the band between, crowd regions,
      degenerate anchors) — `jaxdet.ops.matching`'s FOREGROUND / BACKGROUND / IGNORE.
    classes: int32 `[N]`: the matched ground truth's label on positives, 0 elsewhere.
    box_targets: `[N, 4]` Faster R-CNN deltas of the matched ground truth (`weights`) on positives, 0 elsewhere.
  """
  result = match_boxes(anchors, boxes, valid, fg_threshold=fg_iou, bg_threshold=bg_iou,
                       allow_low_quality_matches=allow_low_quality_matches, gt_crowd=crowd)
  positive = result.labels == FOREGROUND
  classes = jnp.where(positive, jnp.asarray(labels, jnp.int32)[result.matched_gt], 0)
  matched = jnp.asarray(boxes, jnp.float32)[result.matched_gt]
  deltas = encode_boxes(jnp.where(positive[:, None], matched, anchors), anchors, weights=weights)
  return {"match": result.labels, "classes": classes, "box_targets": jnp.where(positive[:, None], deltas, 0.0)}


def retinanet_loss(outputs: dict[str, Sequence[jax.Array]], targets: dict[str, jax.Array], *, num_classes: int,
                   alpha: float = 0.25, gamma: float = 2.0, box_loss_beta: float = 0.1,
                   box_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: focal loss + box_weight x smooth-L1 over a batch, each / number of positives.

  The focal loss (`sigmoid_focal_loss`, eq. 5) is summed over the C classes of every anchor that is not ignored,
  the box loss (`smooth_l1_loss` with `box_loss_beta`; 0 is L1) over the 4 deltas of the positive anchors; both
  are divided by the number of positive anchors in the batch, at least 1 (sec. 3.3 / 4.1). With gamma = 0 and
  alpha < 0 the class loss is plain binary cross-entropy.
  """
  logits = flatten_levels(outputs["logits"], num_classes)
  deltas = flatten_levels(outputs["deltas"], 4)
  check_num_rows(logits, targets["match"].shape[1], "RetinaNet loss")
  positive = targets["match"] == FOREGROUND
  cares = targets["match"] != IGNORE
  num_positive = jnp.sum(positive)
  normalizer = jnp.maximum(num_positive, 1).astype(jnp.float32)
  onehot = jax.nn.one_hot(targets["classes"], num_classes, dtype=jnp.float32) * positive[..., None]
  focal = jnp.sum(sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma), axis=-1)
  cls_loss = jnp.sum(jnp.where(cares, focal, 0.0)) / normalizer
  box = jnp.sum(smooth_l1_loss(deltas - targets["box_targets"], beta=box_loss_beta), axis=-1)
  box_loss = jnp.sum(jnp.where(positive, box, 0.0)) / normalizer
  loss = cls_loss + box_weight * box_loss
  return loss, {"loss": loss, "cls_loss": cls_loss, "box_loss": box_loss,
                "positives_per_image": num_positive.astype(jnp.float32) / positive.shape[0]}


def build_retinanet(*, num_classes: int, depth: int = 18, width: int = 64, fpn_features: int = 256,
                    head_features: int = 256, num_convs: int = 4, min_level: int = 3, max_level: int = 7,
                    fpn_extra: str = "conv_c5", anchor_base_scale: float = 4.0, scales_per_octave: int = 3,
                    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), prior_prob: float = 0.01,
                    fg_iou: float = 0.5, bg_iou: float = 0.4, allow_low_quality_matches: bool = False,
                    focal_alpha: float = 0.25, focal_gamma: float = 2.0, box_loss_beta: float = 0.1,
                    box_weight: float = 1.0, candidates_per_level: int = 1000, score_threshold: float = 0.05,
                    nms_threshold: float = 0.5, max_detections: int = 100, dtype: Any = jnp.float32) -> Detector:
  """Returns the RetinaNet `Detector`: the module and its `assign`, `loss`, `postprocess` (module docstring).

  Anchors of level l have sizes `anchor_base_scale * 2^l * 2^(k / scales_per_octave)` at every `aspect_ratios`
  (h / w); the paper's defaults are P3-P7, base 4, 3 scales, ratios 0.5, 1, 2. `dtype` is the compute type of the
  convolutions (e.g. "bfloat16"); parameters, head outputs, targets, losses and boxes stay float32.
  """
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"RetinaNet computes in float32, bfloat16 or float16, got dtype {dtype}")
  if not 0 < bg_iou <= fg_iou <= 1:
    raise ValueError(f"RetinaNet needs 0 < bg_iou <= fg_iou <= 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
  levels = tuple(range(min_level, max_level + 1))
  num_anchors = scales_per_octave * len(aspect_ratios)
  module = RetinaNet(num_classes=num_classes, num_anchors=num_anchors, depth=depth, width=width,
                     fpn_features=fpn_features, head_features=head_features, num_convs=num_convs,
                     min_level=min_level, max_level=max_level, fpn_extra=fpn_extra, prior_prob=prior_prob,
                     dtype=dtype)

  def anchors_for(image_shape) -> tuple[jax.Array, tuple[int, ...]]:
    check_image_shape(image_shape, "RetinaNet")
    return retinanet_anchors(pyramid_shapes(image_shape, levels), levels=levels, base_scale=anchor_base_scale,
                             scales_per_octave=scales_per_octave, aspect_ratios=tuple(aspect_ratios))

  def assign(batch):
    anchors, _ = anchors_for(batch["image"].shape[1:3])
    one = lambda b, l, v, c: retinanet_targets(anchors, b, l, v, c, fg_iou=fg_iou, bg_iou=bg_iou,  # noqa: E731
                                               allow_low_quality_matches=allow_low_quality_matches)
    return jax.vmap(one)(batch["boxes"], batch["labels"], batch["valid"], batch["crowd"])

  def loss(outputs, targets):
    return retinanet_loss(outputs, targets, num_classes=num_classes, alpha=focal_alpha, gamma=focal_gamma,
                          box_loss_beta=box_loss_beta, box_weight=box_weight)

  def postprocess(outputs, image_shape=None):
    shapes = [m.shape[1:3] for m in outputs["logits"]]
    # The anchors are a function of the level shapes; the image shape only clips.
    anchors, counts = retinanet_anchors(shapes, levels=levels, base_scale=anchor_base_scale,
                                        scales_per_octave=scales_per_octave, aspect_ratios=tuple(aspect_ratios))
    scores = jax.nn.sigmoid(flatten_levels(outputs["logits"], num_classes))
    boxes = decode_boxes(flatten_levels(outputs["deltas"], 4), anchors[None])
    return select_detections(boxes, scores, level_sizes=counts, candidates_per_level=candidates_per_level,
                             score_threshold=score_threshold, iou_threshold=nms_threshold,
                             max_detections=max_detections, image_shape=image_shape)

  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes)

