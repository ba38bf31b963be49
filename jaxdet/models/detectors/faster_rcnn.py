"""Faster R-CNN (Ren et al. 2015; course C) and Faster R-CNN + FPN (Lin et al. 2017; course G3).

Composition: backbone (ResNet to C4, or VGG-16 to conv5_3: one stride-16 map; or ResNet C2-C5 + FPN: P2-P6) ->
RPN head on every map (`heads/rpn.py`) -> proposals (`ops/proposals.py`: decode, clip, top-N, NMS 0.7, top-K) ->
RoI pooling (RoI Pool 7 x 7 as the paper, or RoI Align; FPN: each RoI on its level, k = floor(k0 + log2(sqrt(wh) /
canonical))) -> RoI box head (two FC layers, or ResNet's C5 stage) -> softmax over C + 1 and class-specific deltas
(`heads/roi_box.py`).

Training is the paper's approximate joint training by default: one forward pass computes the RPN's outputs, takes
its proposals without a gradient, samples 128 RoIs per image from them and the ground truth (the `sampling` rng
stream), and runs the RoI head on those; the loss adds the RPN's and the head's terms. The 4-step alternating
training (sec. 3.2) is `stage` plus the trainer's frozen parameters and `init_from`:
  1. stage="rpn": backbone + RPN trained on the RPN loss.
  2. stage="rcnn", separate_proposer=True: a fresh backbone + RoI head trained on the proposals of step 1's network,
     which rides along frozen as `proposer_backbone` (+ `proposer_neck`) and `rpn`.
  3. stage="rpn", frozen_backbone=True: step 2's backbone (and neck) frozen, the RPN fine-tuned.
  4. stage="rcnn", frozen_backbone=True: the backbone and RPN frozen, the RoI head fine-tuned.
`frozen_backbone` runs the shared layers in inference mode (batch-norm running statistics), so frozen layers
compute exactly the features they were trained to give; the optimiser's `frozen` patterns keep their parameters.

Scaled to the data: the paper's anchors (128-512 px) and FPN's (32-512 px, canonical RoI size 224) are for ~800 px
images; the sizes, the canonical size and the proposal counts are arguments, set by the configs.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.resnet import ResNet
from jaxdet.models.backbones.stride16 import stride16_features
from jaxdet.models.detector import Detector
from jaxdet.models.heads.roi_box import (ResNetC5Head, TwoFCHead, decode_detections, pool_rois, roi_head_loss,
                                         sample_roi_batch)
from jaxdet.models.heads.rpn import RPNHead, objectness_score, rpn_loss, rpn_targets, sample_anchors
from jaxdet.models.necks.fpn import FPN
from jaxdet.ops.anchors import multilevel_anchors
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from jaxdet.ops.proposals import generate_proposals
from jaxdet.ops.roi_levels import multilevel_roi_align

STAGES = ("joint", "rpn", "rcnn")
FPN_STRIDES = (4, 8, 16, 32, 64)  # P2-P6; RoIs are pooled from P2-P5


def anchor_layout(image_shape: tuple[int, int], *, fpn: bool, anchor_sizes: Sequence[float],
                  aspect_ratios: Sequence[float]) -> tuple[jax.Array, tuple[int, ...]]:
  """Returns the RPN's anchors `[N, 4]` (xyxy pixels, levels concatenated) and the anchors per level.

  Single map: stride 16, every size x ratio at every cell (the paper's 9). FPN: P2-P6 with one size per level
  (`anchor_sizes[l]`) x the ratios (15 anchor shapes, 3 per cell).
  """
  h, w = image_shape
  strides = FPN_STRIDES if fpn else (16,)
  if h % strides[-1] or w % strides[-1]:
    raise ValueError(f"Faster R-CNN{' + FPN' if fpn else ''} needs image sides that are multiples of "
                     f"{strides[-1]}, got {h}x{w}")
  if fpn and len(anchor_sizes) != len(FPN_STRIDES):
    raise ValueError(f"FPN takes one anchor size per level P2-P6, got {anchor_sizes}")
  sizes = [(s,) for s in anchor_sizes] if fpn else [tuple(anchor_sizes)]
  return multilevel_anchors([(h // s, w // s) for s in strides], strides=strides, sizes=sizes,
                            aspect_ratios=tuple(aspect_ratios))


class FasterRCNN(nn.Module):
  """Returns a dict of raw outputs for images `[B, H, W, 3]` (see the module docstring for the pipeline).

  Always: `rpn_objectness [B, N, K]`, `rpn_deltas [B, N, 4]`, `proposals [B, P, 4]`, `proposal_scores [B, P]`,
  `proposal_valid [B, P]`. In training (with `targets` from `assign`): `rpn_sampled [B, N]` (the anchor minibatch)
  and, unless stage="rpn", `roi_targets` (`sample_rois`'s dict, `[B, S, ...]`), `roi_logits [B, S, C + 1]`,
  `roi_deltas [B, S, C, 4]`. In inference: `rois` (= the proposals), `roi_valid`, `roi_logits`, `roi_deltas`.
  Subclasses change the box head (`_box_head`) or add RoI branches (`_extend`): IoU-Net (`detectors/iou_net.py`)
  and KL-Loss (`detectors/kl_rcnn.py`).
  """

  num_classes: int
  backbone: str = "resnet"  # resnet | vgg
  depth: int = 18
  width: int = 64
  batch_norm: bool = True  # VGG only
  fpn: bool = False
  fpn_features: int = 256
  anchor_sizes: Sequence[float] = (128, 256, 512)
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
  rpn_features: int = 512
  rpn_softmax: bool = True
  rpn_ignore_border: bool = True
  rpn_batch_size: int = 256
  train_pre_nms_top_n: int = 12000
  train_post_nms_top_n: int = 2000
  test_pre_nms_top_n: int = 6000
  test_post_nms_top_n: int = 300
  rpn_nms_threshold: float = 0.7
  rpn_min_size: float = 0.0
  roi_batch_size: int = 128
  roi_positive_fraction: float = 0.25
  roi_bg_low_threshold: float = 0.1
  pooler: str = "align"  # align | pool
  pool_size: int = 7
  sampling_ratio: int = 2
  canonical_size: float = 224.0
  head: str = "2fc"  # 2fc | c5
  head_features: int = 1024
  head_dropout: float = 0.0
  stage: str = "joint"
  separate_proposer: bool = False
  frozen_backbone: bool = False
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  def _features(self, x, *, train: bool, prefix: str = "") -> list[jax.Array]:
    """The maps the RPN and the RoI head read: [C4] / [conv5_3], or FPN's [P2, ..., P6]."""
    if not self.fpn:
      return [stride16_features(x, backbone=self.backbone, depth=self.depth, width=self.width,
                                batch_norm=self.batch_norm, dtype=self.dtype, train=train, name=f"{prefix}backbone")]
    if self.backbone != "resnet":
      raise ValueError(f"the FPN variant is built on ResNet (backbone='resnet'), got {self.backbone!r}")
    stages = ResNet(depth=self.depth, width=self.width, num_stages=4, dtype=self.dtype, name=f"{prefix}backbone")(
        x, train=train)
    return FPN(features=self.fpn_features, min_level=2, max_level=6, extra="maxpool", dtype=self.dtype,
               name=f"{prefix}neck")(stages)

  def _pool(self, maps: list[jax.Array], rois: jax.Array, valid: jax.Array, *, train: bool) -> jax.Array:
    """Returns `[B * S, oh, ow, C]` pooled features of the RoIs `[B, S, 4]` of each image (invalid ones: zeros).

    In training RoI Align runs in its "rows" formulation: many RoIs on small maps, where its gradient is several
    times cheaper than the tap formulation's (see `jaxdet.ops.roi_align_rows`). At test time there is no gradient
    and the tap formulation's forward pass is 4-6x cheaper (it reads 16 taps per bin, where "rows" reads and
    multiplies whole rows padded to P2's width: 300 RoIs x 8 images at 512 px, 84 vs 500 ms of CPU).
    """
    size = 2 * self.pool_size if self.head == "c5" else self.pool_size
    if not self.fpn:
      return pool_rois(maps[0], rois, valid, pooler=self.pooler, output_size=size, spatial_scale=1 / 16,
                       sampling_ratio=self.sampling_ratio, train=train)
    b, s, _ = rois.shape
    index = jnp.where(valid, jnp.arange(b, dtype=jnp.int32)[:, None], -1).reshape(-1)  # -1 pools zeros
    return multilevel_roi_align(maps[:4], rois.reshape(b * s, 4), index, output_size=size, strides=FPN_STRIDES[:4],
                                sampling_ratio=self.sampling_ratio, aligned=True, canonical_size=self.canonical_size,
                                method="rows" if train else "taps")

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    if self.stage not in STAGES:
      raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
    image_shape = tuple(images.shape[1:3])
    anchors, level_sizes = anchor_layout(image_shape, fpn=self.fpn, anchor_sizes=self.anchor_sizes,
                                         aspect_ratios=self.aspect_ratios)
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    maps = self._features(x, train=train and not self.frozen_backbone)
    rpn = RPNHead(num_anchors=len(self.aspect_ratios) * (1 if self.fpn else len(self.anchor_sizes)),
                  features=self.rpn_features, softmax=self.rpn_softmax, dtype=self.dtype, name="rpn")
    if self.separate_proposer:  # step 2 of the alternating training: proposals from the frozen step-1 network
      proposer_maps = jax.lax.stop_gradient(self._features(x, train=False, prefix="proposer_"))
      objectness, deltas = rpn(proposer_maps)
    else:
      objectness, deltas = rpn(maps)
    pre, post = ((self.train_pre_nms_top_n, self.train_post_nms_top_n) if train else
                 (self.test_pre_nms_top_n, self.test_post_nms_top_n))
    proposals, proposal_scores, proposal_valid = jax.vmap(
        lambda o, d: generate_proposals(anchors, o, d, image_shape=image_shape, level_sizes=level_sizes,
                                        pre_nms_top_n=pre, post_nms_top_n=post, nms_threshold=self.rpn_nms_threshold,
                                        min_size=self.rpn_min_size))(
        jax.lax.stop_gradient(objectness_score(objectness)), jax.lax.stop_gradient(deltas))
    out = {"rpn_objectness": objectness, "rpn_deltas": deltas, "proposals": proposals,
           "proposal_scores": proposal_scores, "proposal_valid": proposal_valid}

    head = self._box_head()
    if not train:
      out |= {"rois": proposals, "roi_valid": proposal_valid}
      pooled = self._pool(maps, proposals, proposal_valid, train=False)
      out |= self._roi_outputs(head(pooled, train=False), proposals.shape[:2])
      return self._extend(maps, out, train=False, targets=None, image_shape=image_shape)

    if targets is None:
      raise ValueError("Faster R-CNN's training forward pass needs the targets of `assign` (targets=...)")
    key = self.make_rng("sampling")
    rpn_key, roi_key = jax.random.split(key)
    out["rpn_sampled"] = sample_anchors(targets["rpn_labels"], key=rpn_key, num_samples=self.rpn_batch_size)
    if self.stage == "rpn":
      return out
    sampled = sample_roi_batch(proposals, proposal_valid, targets, key=roi_key, num_samples=self.roi_batch_size,
                               positive_fraction=self.roi_positive_fraction,
                               bg_low_threshold=self.roi_bg_low_threshold)
    out["roi_targets"] = sampled
    out |= self._roi_outputs(head(self._pool(maps, sampled["rois"], sampled["valid"], train=True), train=True),
                             sampled["valid"].shape)
    return self._extend(maps, out, train=True, targets=targets, image_shape=image_shape)

  def _box_head(self) -> nn.Module:
    """The RoI box head: two FC layers, or ResNet's C5 stage (`head`)."""
    if self.head == "c5":
      return ResNetC5Head(self.num_classes, features=self.width * 8, dtype=self.dtype, name="roi_head")
    return TwoFCHead(self.num_classes, features=self.head_features, dropout=self.head_dropout, dtype=self.dtype,
                     name="roi_head")

  def _roi_outputs(self, head_outputs: tuple[jax.Array, ...], batch_shape: tuple[int, int]) -> dict[str, jax.Array]:
    """Names the head's `[B * S, ...]` outputs as `[B, S, ...]` outputs: `roi_logits`, `roi_deltas` and, from a
    head that predicts them, `roi_log_variance` (KL-Loss)."""
    names = ("roi_logits", "roi_deltas", "roi_log_variance")
    return {name: x.reshape(*batch_shape, *x.shape[1:]) for name, x in zip(names, head_outputs)}

  def _extend(self, maps: list[jax.Array], out: dict[str, Any], *, train: bool, targets: Any,
              image_shape: tuple[int, int]) -> dict[str, Any]:
    """Returns `out` with the outputs of further RoI branches (none here; IoU-Net's IoU branch overrides this).

    Called with the feature maps after the box head, in training (unless stage="rpn") and inference.
    """
    del maps, train, targets, image_shape
    return out


def faster_rcnn_loss(outputs: dict[str, Any], targets: dict[str, jax.Array], *, stage: str = "joint",
                     rpn_beta: float = 1.0 / 9.0, roi_beta: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: the RPN's and the RoI head's classification + regression losses (by `stage`).

  Every term is reported; only the stage's terms are summed into the loss ("rpn": the RPN's, "rcnn": the head's,
  "joint": all four, weighted 1 as the paper).
  """
  metrics = {}
  loss = jnp.float32(0.0)
  if "rpn_sampled" in outputs:
    rpn_cls, rpn_reg = rpn_loss(outputs["rpn_objectness"], outputs["rpn_deltas"], outputs["rpn_sampled"],
                                targets["rpn_deltas"], beta=rpn_beta)
    metrics |= {"rpn_cls_loss": rpn_cls, "rpn_box_loss": rpn_reg,
                "rpn_positives": jnp.sum(outputs["rpn_sampled"] == 1).astype(jnp.float32)}
    if stage in ("joint", "rpn"):
      loss += rpn_cls + rpn_reg
  if "roi_targets" in outputs:
    roi_loss, roi_metrics = roi_head_loss(outputs, beta=roi_beta)
    metrics |= roi_metrics
    if stage in ("joint", "rcnn"):
      loss += roi_loss
  metrics["loss"] = loss
  return loss, metrics


def make_assign(module: FasterRCNN, *, rpn_allowed_border: float = 0.0):
  """Returns `assign(batch) -> targets` of a Faster R-CNN module (or a subclass): the RPN's anchor labels and
  deltas (`rpn_targets`: 0.7 / 0.3, best anchors, border ignore) and the padded ground truth, passed on for RoI
  sampling inside the forward pass."""

  def assign(batch):
    image_shape = tuple(batch["image"].shape[1:3])
    anchors, _ = anchor_layout(image_shape, fpn=module.fpn, anchor_sizes=module.anchor_sizes,
                               aspect_ratios=module.aspect_ratios)
    rpn = jax.vmap(lambda b, v, c: rpn_targets(anchors, b, v, c, image_shape=image_shape,
                                               ignore_border=module.rpn_ignore_border,
                                               allowed_border=rpn_allowed_border))(
        batch["boxes"], batch["valid"], batch["crowd"])
    return {"rpn_labels": rpn["labels"], "rpn_deltas": rpn["deltas"], "boxes": batch["boxes"],
            "labels": batch["labels"], "valid": batch["valid"], "crowd": batch["crowd"]}

  return assign


def build_faster_rcnn(*, num_classes: int, score_threshold: float = 0.05, nms_threshold: float = 0.5,
                      max_detections: int = 100, rpn_allowed_border: float = 0.0, **options: Any) -> Detector:
  """Returns the Faster R-CNN `Detector`; `options` are `FasterRCNN`'s attributes (backbone, fpn, anchors, ...).

  `assign` labels every anchor for the RPN (`rpn_targets`: 0.7 / 0.3, best anchors, border ignore) and passes the
  padded ground truth on for RoI sampling inside the forward pass; `postprocess` decodes each RoI per class and
  keeps scores > `score_threshold` through class-aware NMS at `nms_threshold`, `max_detections` per image.
  """
  if "dtype" in options:
    options["dtype"] = jnp.dtype(options["dtype"])
  module = FasterRCNN(num_classes=num_classes, **options)
  assign = make_assign(module, rpn_allowed_border=rpn_allowed_border)

  def loss(outputs, targets):
    return faster_rcnn_loss(outputs, targets, stage=module.stage)

  def postprocess(outputs, image_shape=None):
    return decode_detections(outputs["rois"], outputs["roi_valid"], outputs["roi_logits"], outputs["roi_deltas"],
                             image_shape=image_shape, score_threshold=score_threshold, iou_threshold=nms_threshold,
                             max_detections=max_detections)

  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes)

