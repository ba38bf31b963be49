"""KL-Loss box regression with uncertainty and its inference (He et al. 2019, "Bounding Box Regression with
Uncertainty for Accurate Object Detection"; course A*: Softer-NMS).

The RoI head predicts, for every class, the four corner offsets (`encode_corners`: each side relative to the RoI's,
over its size; weights `CORNER_WEIGHTS`) and their log-variances alpha = log sigma^2 (`TwoFCHead(box_variance=True)`).
Training replaces the smooth L1 loss with the KL divergence between the Dirac ground truth and the predicted
Gaussian (`jaxdet.ops.kl_loss`, the smooth-L1 form for |delta| > 1), so a coordinate the head cannot place
precisely learns a large variance and pays a smaller regression penalty. Inference: NMS (or Soft-NMS, as the paper
combines them), then variance voting (`jaxdet.ops.variance_voting`): each kept box becomes the
1 / sigma^2-weighted mean of the same-class candidates overlapping it, also weighted by exp(-(1 - IoU)^2 / sigma_t).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdet.models.detector import Detections
from jaxdet.models.rescoring import select_per_class, top_candidates
from jaxdet.ops.coders import decode_corners
from jaxdet.ops.losses import kl_loss
from jaxdet.ops.softer_nms import variance_voting

CORNER_WEIGHTS = (10.0, 10.0, 10.0, 10.0)  # the unit of a corner delta: a tenth of the RoI's size, as dx, dy


def kl_box_loss(deltas: jax.Array, log_variance: jax.Array, labels: jax.Array, target_deltas: jax.Array,
                valid: jax.Array) -> jax.Array:
  """Returns the KL regression loss over sampled RoIs, summed over the foreground RoIs' four coordinates (of their
  own class) and divided by the number of sampled RoIs (the normalisation of `roi_box_loss`).

  Args:
    deltas, log_variance: `[..., S, C, 4]` class-specific predictions (alpha = log sigma^2).
    labels: int `[..., S]` 0 background, c + 1 class c; target_deltas: `[..., S, 4]`; valid: bool `[..., S]`.
  """
  own = lambda x: jnp.take_along_axis(x, jnp.maximum(labels - 1, 0)[..., None, None], axis=-2)[..., 0, :]  # noqa
  per_roi = jnp.sum(kl_loss(own(deltas), target_deltas, own(log_variance)), axis=-1)
  foreground = valid & (labels > 0)
  return jnp.sum(jnp.where(foreground, per_roi, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def corner_variances(log_variance: jax.Array, rois: jax.Array, *,
                     weights: Sequence[float] = CORNER_WEIGHTS) -> jax.Array:
  """Returns `[..., 4]` variances in pixels^2 of the decoded corners: exp(alpha) (RoI size / weight)^2."""
  size = jnp.concatenate([rois[..., 2:] - rois[..., :2]] * 2, axis=-1)
  return jnp.exp(log_variance.astype(jnp.float32)) * jnp.square(size / jnp.asarray(weights, jnp.float32))


def decode_kl_detections(rois: jax.Array, roi_valid: jax.Array, class_logits: jax.Array, deltas: jax.Array,
                         log_variance: jax.Array, *, image_shape: tuple[int, int] | None, score_threshold: float = 0.05,
                         iou_threshold: float = 0.5, max_detections: int = 100, pre_nms_top_k: int = 1000,
                         soft_nms: bool = False, soft_nms_sigma: float = 0.5, voting: bool = True,
                         sigma_t: float = 0.02, weights: Sequence[float] = CORNER_WEIGHTS) -> Detections:
  """Returns `Detections` of a KL-Loss head: per-class corner boxes, NMS or Soft-NMS, then variance voting.

  `rois [B, R, 4]` with `roi_valid [B, R]`, `class_logits [B, R, C + 1]`, `deltas` and `log_variance`
  `[B, R, C, 4]`. Per image: the `pre_nms_top_k` best (RoI, class) pairs scoring above `score_threshold`
  (`top_candidates`), per-class NMS at `iou_threshold` or Gaussian Soft-NMS (`soft_nms_sigma`), the best
  `max_detections`; with `voting`, each kept box voted by the candidates of its class with IoU > 0
  (`sigma_t`; the paper's Algorithm 1). Scores are not changed by voting.
  """
  scores = jax.nn.softmax(class_logits, axis=-1)[..., 1:] * roi_valid[..., None]
  boxes = decode_corners(deltas, rois[..., None, :], weights=weights)
  variances = corner_variances(log_variance, rois[..., None, :], weights=weights)
  num_classes = scores.shape[-1]

  def one(boxes, scores, variances):
    cand = top_candidates(boxes, scores, top_k=pre_nms_top_k, score_threshold=score_threshold,
                          image_shape=image_shape)
    keep, kept_scores, kept = select_per_class(cand, num_classes=num_classes, method="soft" if soft_nms else "nms",
                                               iou_threshold=iou_threshold, max_outputs=max_detections,
                                               soft_sigma=soft_nms_sigma)
    kept_boxes = cand.boxes[keep]
    if voting:
      voters = jnp.where(cand.valid[:, None], variances.reshape(-1, 4)[cand.index], jnp.inf)  # inf: no vote
      kept_boxes = variance_voting(cand.boxes, voters, keep, kept_valid=kept, classes=cand.classes, sigma_t=sigma_t)
    return Detections(boxes=jnp.where(kept[:, None], kept_boxes, 0.0), scores=kept_scores,
                      classes=jnp.where(kept, cand.classes[keep], 0).astype(jnp.int32), valid=kept)

  return jax.vmap(one)(boxes, scores, variances)
