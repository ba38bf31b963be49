"""Fast R-CNN (Girshick, ICCV 2015; course B): external proposals, one forward pass per image, RoI pooling.

Composition: backbone on the whole image (ResNet to C4 or VGG-16 to conv5_3: one stride-16 map) -> the image's
external proposals (selective search, the detector's `inputs`: `proposals [P, 4]`, `proposal_valid [P]` per image)
-> RoI Pool 7 x 7 (or RoI Align) -> fc6, fc7 -> softmax over C + 1 and class-specific box deltas. This is Faster
R-CNN's RoI path (`heads/roi_box.py`: sampling, head, loss, decoding are shared) with the RPN replaced by
proposals computed once, on the host, before training.

Training (sec. 2.3): hierarchical sampling — a minibatch is `batch_size` images (2 in the paper) and
`rois_per_image` RoIs of each (64), at most 25% foreground (IoU >= 0.5 with a ground truth; the ground truth is
appended to the candidates as in the reference code) and background in [0.1, 0.5) (the course's "hard" negatives
below 0.1 are left out); the multi-task loss is cross-entropy + smooth L1 on the foreground's own-class deltas.
Test: every valid proposal is scored; per-class boxes, score > 0.05, class-aware NMS (0.3 in the paper), top 100.
`svd_ranks` runs fc6 / fc7 factored by truncated SVD (sec. 3.1) on parameters from `truncate_fc_svd`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.stride16 import stride16_features
from jaxdet.models.detector import Detector
from jaxdet.models.heads.roi_box import TwoFCHead, decode_detections, pool_rois, roi_head_loss, sample_roi_batch
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image


def proposal_scores(proposal_valid: jax.Array) -> jax.Array:
  """Returns `[..., P]` scores in (0, 1] that keep the proposals' given (ranked) order, 0 where invalid."""
  p = proposal_valid.shape[-1]
  return jnp.where(proposal_valid, 1.0 - jnp.arange(p, dtype=jnp.float32) / p, 0.0)


class FastRCNN(nn.Module):
  """Returns a dict of raw outputs for images `[B, H, W, 3]` and their proposals `[B, P, 4]` / `[B, P]`.

  Inference: `rois` (= the proposals), `roi_valid`, `roi_logits [B, P, C + 1]`, `roi_deltas [B, P, C, 4]`, and
  `proposals`, `proposal_valid`, `proposal_scores` (the given ranking, for proposal-recall tools). Training (with
  `targets` from `assign`): `roi_targets` (`sample_roi_batch`'s dict, `[B, S, ...]`), `roi_logits [B, S, C + 1]`,
  `roi_deltas [B, S, C, 4]`, S = `rois_per_image`.
  """

  num_classes: int
  backbone: str = "resnet"  # resnet | vgg
  depth: int = 18
  width: int = 64
  batch_norm: bool = True  # VGG only
  rois_per_image: int = 64
  roi_positive_fraction: float = 0.25
  roi_bg_low_threshold: float = 0.1
  pooler: str = "pool"  # pool | align
  pool_size: int = 7
  sampling_ratio: int = 2
  head_features: int = 4096
  head_dropout: float = 0.0
  svd_ranks: Sequence[int] = ()
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None, proposals=None, proposal_valid=None):
    if proposals is None or proposal_valid is None:
      raise ValueError("Fast R-CNN reads external proposals: call it with proposals [B, P, 4] and proposal_valid "
                       "[B, P] (the batch fields of config.data.proposals)")
    proposals = jnp.asarray(proposals, jnp.float32)
    proposal_valid = jnp.asarray(proposal_valid, bool)
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    feature_map = stride16_features(x, backbone=self.backbone, depth=self.depth, width=self.width,
                                    batch_norm=self.batch_norm, dtype=self.dtype, train=train, name="backbone")
    head = TwoFCHead(self.num_classes, features=self.head_features, dropout=self.head_dropout,
                     svd_ranks=tuple(self.svd_ranks), dtype=self.dtype, name="roi_head")

    def run_head(rois, valid):
      pooled = pool_rois(feature_map, rois, valid, pooler=self.pooler, output_size=self.pool_size,
                         spatial_scale=1 / 16, sampling_ratio=self.sampling_ratio, train=train)
      logits, deltas = head(pooled, train=train)
      b, s = valid.shape
      return logits.reshape(b, s, -1), deltas.reshape(b, s, self.num_classes, 4)

    if not train:
      logits, deltas = run_head(proposals, proposal_valid)
      return {"rois": proposals, "roi_valid": proposal_valid, "roi_logits": logits, "roi_deltas": deltas,
              "proposals": proposals, "proposal_valid": proposal_valid,
              "proposal_scores": proposal_scores(proposal_valid)}
    if targets is None:
      raise ValueError("Fast R-CNN's training forward pass needs the targets of `assign` (targets=...)")
    sampled = sample_roi_batch(proposals, proposal_valid, targets, key=self.make_rng("sampling"),
                               num_samples=self.rois_per_image, positive_fraction=self.roi_positive_fraction,
                               bg_low_threshold=self.roi_bg_low_threshold)
    logits, deltas = run_head(sampled["rois"], sampled["valid"])
    return {"roi_targets": sampled, "roi_logits": logits, "roi_deltas": deltas}


def build_fast_rcnn(*, num_classes: int, num_proposals: int = 2000, score_threshold: float = 0.05,
                    nms_threshold: float = 0.3, max_detections: int = 100, **options: Any) -> Detector:
  """Returns the Fast R-CNN `Detector`; `options` are `FastRCNN`'s attributes (backbone, pooler, svd_ranks, ...).

  `num_proposals` is P, the proposals per image the loader carries (`config.data.proposals.num`); `assign` passes
  the padded ground truth on for RoI sampling inside the forward pass; `postprocess` decodes each RoI per class
  and keeps scores > `score_threshold` through class-aware NMS at `nms_threshold`, `max_detections` per image.
  """
  if "dtype" in options:
    options["dtype"] = jnp.dtype(options["dtype"])
  if "svd_ranks" in options:
    options["svd_ranks"] = tuple(int(r) for r in options["svd_ranks"])
  module = FastRCNN(num_classes=num_classes, **options)

  def assign(batch):
    return {k: batch[k] for k in ("boxes", "labels", "valid", "crowd")}

  def loss(outputs, targets):
    del targets  # the sampled RoIs' targets are built in the forward pass
    total, metrics = roi_head_loss(outputs)
    return total, metrics | {"loss": total}

  def postprocess(outputs, image_shape=None):
    return decode_detections(outputs["rois"], outputs["roi_valid"], outputs["roi_logits"], outputs["roi_deltas"],
                             image_shape=image_shape, score_threshold=score_threshold, iou_threshold=nms_threshold,
                             max_detections=max_detections)

  inputs = {"proposals": jax.ShapeDtypeStruct((num_proposals, 4), jnp.float32),
            "proposal_valid": jax.ShapeDtypeStruct((num_proposals,), jnp.bool_)}
  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes,
                  inputs=inputs)
