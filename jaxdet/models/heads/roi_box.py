"""The RoI box head of Fast / Faster R-CNN (Girshick 2015; course B): RoI minibatch sampling, the head, its
multi-task loss and per-class decoding.

Training samples, per image, 128 RoIs from the proposals plus the ground-truth boxes (appended as proposals, as the
reference code does): up to 25% foreground (IoU >= 0.5 with a ground truth, labelled with its class 1..C), the rest
background (IoU in [0.1, 0.5), label 0; below 0.1 the RoI is left out, the course's rule; detectron2 and
torchvision use [0, 0.5)). Each RoI is pooled to a fixed grid and scored over C + 1 classes (softmax), and
regresses class-specific deltas encoded with weights (10, 10, 5, 5) (the reference code's target normalisation).
Loss (eq. 1): cross-entropy over the sampled RoIs + smooth L1 (beta = 1) on the foreground RoIs' deltas of their
own class, both divided by the number of sampled RoIs. At test time the two FC layers can run factored by a
truncated SVD (Fast R-CNN sec. 3.1: W ~ U_t S_t V_t^T, one layer becomes two with t units between them;
`truncate_fc_svd` turns trained parameters into the factored ones, `TwoFCHead(svd_ranks=...)` runs them).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.backbones.resnet import BasicBlock
from jaxdet.models.detector import Detections
from jaxdet.models.postprocess import select_detections
from jaxdet.ops.boxes import is_valid_box
from jaxdet.ops.coders import decode_boxes, encode_boxes
from jaxdet.ops.losses import smooth_l1_loss, softmax_cross_entropy
from jaxdet.ops.matching import FOREGROUND, match_boxes
from jaxdet.ops.roi_align import roi_align
from jaxdet.ops.roi_pool import roi_pool
from jaxdet.ops.sampling import sample_balanced

ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def sample_rois(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array, gt_labels: jax.Array,
                gt_valid: jax.Array, gt_crowd: jax.Array, *, key: jax.Array, num_samples: int = 128,
                positive_fraction: float = 0.25, fg_threshold: float = 0.5, bg_threshold: float = 0.5,
                bg_low_threshold: float = 0.1, append_gt: bool = True,
                weights: Sequence[float] = ROI_WEIGHTS) -> dict[str, jax.Array]:
  """Returns one image's RoI minibatch (vmap for a batch), `num_samples` slots:

    rois `[S, 4]` xyxy pixels; labels int32 `[S]` (class + 1 for foreground, 0 background); deltas `[S, 4]`
    regression targets of foreground RoIs (weights `weights`, zero elsewhere); valid bool `[S]` (sampled slots,
    first); iou `[S]` the RoI's IoU with its matched ground truth; matched `[S]` int32 that ground truth's index.

  Candidates are the valid `proposals [P, 4]` and, with `append_gt`, the valid non-crowd ground truth
  `gt_boxes [M, 4]` (labels int `[M]` in [0, C)); they are matched (foreground at IoU >= `fg_threshold`,
  background in [`bg_low_threshold`, `bg_threshold`), crowd-covered ones ignored) and sampled by
  `sample_balanced` (at most `positive_fraction` foreground, background filling the rest, uniformly at random).
  The sampled candidates take the first slots in candidate order; fewer than `num_samples` leaves invalid slots.
  """
  gt_valid = jnp.asarray(gt_valid, bool) & is_valid_box(gt_boxes)
  candidates, candidate_valid = proposals, jnp.asarray(proposal_valid, bool)
  if append_gt:
    candidates = jnp.concatenate([candidates, gt_boxes], axis=0)
    candidate_valid = jnp.concatenate([candidate_valid, gt_valid & ~jnp.asarray(gt_crowd, bool)])
  candidates = jnp.where(candidate_valid[:, None], candidates, 0.0)  # degenerate: ignored by the matcher
  match = match_boxes(candidates, gt_boxes, gt_valid, fg_threshold=fg_threshold, bg_threshold=bg_threshold,
                      bg_low_threshold=bg_low_threshold, gt_crowd=gt_crowd)
  chosen = sample_balanced(match.labels, key=key, num_samples=num_samples, positive_fraction=positive_fraction)
  (index,) = jnp.nonzero(chosen, size=num_samples, fill_value=0)
  valid = jnp.arange(num_samples) < jnp.sum(chosen)
  foreground = valid & (match.labels[index] == FOREGROUND)
  matched = match.matched_gt[index]
  rois = candidates[index]
  deltas = encode_boxes(gt_boxes[matched], rois, weights=weights)
  return {"rois": jnp.where(valid[:, None], rois, 0.0),
          "labels": jnp.where(foreground, gt_labels[matched] + 1, 0).astype(jnp.int32),
          "deltas": jnp.where(foreground[:, None], deltas, 0.0), "valid": valid,
          "iou": jnp.where(valid, match.max_iou[index], 0.0), "matched": matched}


def sample_roi_batch(proposals: jax.Array, proposal_valid: jax.Array, targets: dict[str, jax.Array], *,
                     key: jax.Array, num_samples: int = 128, positive_fraction: float = 0.25,
                     bg_low_threshold: float = 0.1) -> dict[str, jax.Array]:
  """Returns `sample_rois`'s dict with a batch axis (`[B, S, ...]`): each image's RoI minibatch, its own key.

  `proposals [B, P, 4]`, `proposal_valid [B, P]`; `targets` holds the padded ground truth `boxes [B, M, 4]`,
  `labels`, `valid`, `crowd` `[B, M]`; image b draws with `fold_in(key, b)`.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(proposals.shape[0]))
  return jax.vmap(lambda p, v, gb, gl, gv, gc, k: sample_rois(
      p, v, gb, gl, gv, gc, key=k, num_samples=num_samples, positive_fraction=positive_fraction,
      bg_low_threshold=bg_low_threshold))(proposals, proposal_valid, targets["boxes"], targets["labels"],
                                          targets["valid"], targets["crowd"], keys)


def pool_rois(feature_map: jax.Array, rois: jax.Array, valid: jax.Array, *, pooler: str, output_size: int,
              spatial_scale: float, sampling_ratio: int = 2, train: bool = True) -> jax.Array:
  """Returns `[B * S, oh, ow, C]` features of the RoIs `rois [B, S, 4]` (xyxy image pixels) of each image, pooled
  from one map `[B, H, W, C]` by RoI Pool ("pool", Fast R-CNN) or RoI Align ("align"); invalid RoIs pool zeros.

  RoI Align runs in its "rows" formulation when `train` (fast gradients for many RoIs on small maps) and in its
  "taps" formulation otherwise (the faster forward pass; `jaxdet.ops.roi_align`). The two agree to float rounding.
  """
  b, s, _ = rois.shape
  index = jnp.where(valid, jnp.arange(b, dtype=jnp.int32)[:, None], -1).reshape(-1)  # -1 pools zeros
  boxes = rois.reshape(b * s, 4)
  if pooler == "align":
    return roi_align(feature_map, boxes, index, output_size=output_size, spatial_scale=spatial_scale,
                     sampling_ratio=sampling_ratio, aligned=True, method="rows" if train else "taps")
  if pooler == "pool":
    return roi_pool(feature_map, boxes, index, output_size=output_size, spatial_scale=spatial_scale)
  raise ValueError(f"pooler must be align or pool, got {pooler!r}")


class TwoFCHead(nn.Module):
  """Returns `(class_logits [R, C + 1], deltas [R, C, 4])` from pooled RoI features `[R, h, w, D]`.

  Fast R-CNN's head on VGG: flatten, two fully connected layers with ReLU (fc6, fc7; 4096 in the paper, optional
  dropout as VGG's), then the sibling classifier and class-specific box regressor (std 0.01 / 0.001 Gaussian init,
  as the reference code). With `svd_ranks = (t6, t7)` each of fc6 / fc7 is the factored pair `<name>_svd_s`
  (t units, no bias: U_t S_t) then `<name>_svd_v` (V_t^T and the bias) that `truncate_fc_svd` makes from trained
  parameters; a rank of 0 keeps that layer whole. With `box_variance`, a third sibling predicts each delta's
  log-variance (see `_predictors`) and the head returns `(class_logits, deltas, log_variance [R, C, 4])`.
  """

  num_classes: int
  features: int = 1024
  dropout: float = 0.0
  svd_ranks: Sequence[int] = ()
  box_variance: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    x = pooled.reshape(pooled.shape[0], -1).astype(self.dtype)
    ranks = tuple(self.svd_ranks) or (0, 0)
    for name, rank in zip(("fc6", "fc7"), ranks):
      if rank:
        x = nn.Dense(rank, use_bias=False, dtype=self.dtype, name=f"{name}_svd_s")(x)
        x = nn.relu(nn.Dense(self.features, dtype=self.dtype, name=f"{name}_svd_v")(x))
      else:
        x = nn.relu(nn.Dense(self.features, dtype=self.dtype, name=name)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return _predictors(x, self.num_classes, self.dtype, box_variance=self.box_variance)


def truncate_fc_svd(head_params: dict[str, Any], ranks: Sequence[int]) -> dict[str, Any]:
  """Returns `TwoFCHead` parameters with fc6 / fc7 replaced by their rank-`ranks` truncated SVD factors.

  A Dense kernel `W [u, v]` (y = x W + b) is factored W = U S V^T and truncated to the t largest singular values:
  `<name>_svd_s` = U_t S_t `[u, t]`, `<name>_svd_v` = V_t^T `[t, v]` with the bias (Fast R-CNN sec. 3.1, which
  writes W = U S V^T for the transposed layout). The error of one layer is at most |x| s_{t+1} for an input x.
  Ranks of 0 leave a layer as it is. Computed in float64 on the host.
  """
  out = dict(head_params)
  for name, rank in zip(("fc6", "fc7"), ranks):
    if not rank:
      continue
    kernel = np.asarray(head_params[name]["kernel"], np.float64)
    if not 0 < rank <= min(kernel.shape):
      raise ValueError(f"SVD rank of {name} must be in [1, {min(kernel.shape)}], got {rank}")
    u, s, vt = np.linalg.svd(kernel, full_matrices=False)
    dtype = np.asarray(head_params[name]["kernel"]).dtype
    out.pop(name)
    out[f"{name}_svd_s"] = {"kernel": (u[:, :rank] * s[:rank]).astype(dtype)}
    out[f"{name}_svd_v"] = {"kernel": vt[:rank].astype(dtype), "bias": np.asarray(head_params[name]["bias"])}
  return out


class ResNetC5Head(nn.Module):
  """Returns `(class_logits [R, C + 1], deltas [R, C, 4])` from pooled RoI features `[R, 2h, 2w, D]`.

  The ResNet head of Faster R-CNN (He et al. 2016, appendix A): the backbone's last stage (C5: basic blocks,
  stride 2, `features` channels) runs on each pooled RoI (pool to 14 x 14 for a 7 x 7 output), then global
  average pooling and the two sibling predictors (three with `box_variance`, as `TwoFCHead`).
  """

  num_classes: int
  features: int = 512
  num_blocks: int = 2
  box_variance: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    x = pooled.astype(self.dtype)
    for block in range(self.num_blocks):
      x = BasicBlock(self.features, strides=2 if block == 0 else 1, dtype=self.dtype, name=f"block{block + 1}")(
          x, train=train)
    return _predictors(jnp.mean(x, axis=(1, 2)), self.num_classes, self.dtype, box_variance=self.box_variance)


def _predictors(x: jax.Array, num_classes: int, dtype: Any, *, box_variance: bool = False) -> tuple[jax.Array, ...]:
  """The sibling predictors on the head's features `[R, D]`: logits, class-specific deltas and, with
  `box_variance`, their log-variances alpha = log sigma^2 (KL-Loss, He et al. 2019: Gaussian init of std 0.0001,
  so that training starts at alpha ~ 0, where the KL loss is the smooth L1 loss plus a constant)."""
  logits = nn.Dense(num_classes + 1, kernel_init=nn.initializers.normal(0.01), dtype=dtype, name="cls")(x)
  deltas = nn.Dense(num_classes * 4, kernel_init=nn.initializers.normal(0.001), dtype=dtype, name="box")(x)
  out = (logits.astype(jnp.float32), deltas.astype(jnp.float32).reshape(x.shape[0], num_classes, 4))
  if box_variance:
    alpha = nn.Dense(num_classes * 4, kernel_init=nn.initializers.normal(0.0001), dtype=dtype, name="box_variance")(x)
    out += (alpha.astype(jnp.float32).reshape(x.shape[0], num_classes, 4),)
  return out


def roi_box_loss(class_logits: jax.Array, deltas: jax.Array, labels: jax.Array, target_deltas: jax.Array,
                 valid: jax.Array, *, beta: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Returns `(classification, regression)` Fast R-CNN losses over sampled RoIs, each divided by their number.

  Args:
    class_logits: `[..., S, C + 1]`; deltas: `[..., S, C, 4]` class-specific predictions.
    labels: int `[..., S]` 0 background, c + 1 class c; target_deltas: `[..., S, 4]`; valid: bool `[..., S]`.
    beta: smooth-L1 transition (1: Fast R-CNN's eq. 3).
  """
  num = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  classification = jnp.sum(jnp.where(valid, softmax_cross_entropy(class_logits, labels), 0.0)) / num
  foreground = valid & (labels > 0)
  own = jnp.take_along_axis(deltas, jnp.maximum(labels - 1, 0)[..., None, None], axis=-2)[..., 0, :]
  reg = jnp.sum(smooth_l1_loss(own - target_deltas, beta=beta), axis=-1)
  return classification, jnp.sum(jnp.where(foreground, reg, 0.0)) / num


def roi_head_loss(outputs: dict[str, Any], *, beta: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(classification + regression, metrics)` of the RoI head from a training forward pass's outputs
  (`roi_targets` from `sample_roi_batch`, `roi_logits [B, S, C + 1]`, `roi_deltas [B, S, C, 4]`)."""
  t = outputs["roi_targets"]
  cls, reg = roi_box_loss(outputs["roi_logits"], outputs["roi_deltas"], t["labels"], t["deltas"], t["valid"],
                          beta=beta)
  return cls + reg, {"roi_cls_loss": cls, "roi_box_loss": reg,
                     "roi_foreground": jnp.sum(t["valid"] & (t["labels"] > 0)).astype(jnp.float32)}


def decode_detections(rois: jax.Array, roi_valid: jax.Array, class_logits: jax.Array, deltas: jax.Array, *,
                      image_shape: tuple[int, int] | None, score_threshold: float = 0.05,
                      iou_threshold: float = 0.5, max_detections: int = 100,
                      weights: Sequence[float] = ROI_WEIGHTS) -> Detections:
  """Returns `Detections` from a batch of scored RoIs: per-class boxes, score > 0.05, class-aware NMS, top 100.

  `rois [B, R, 4]` with `roi_valid [B, R]`, `class_logits [B, R, C + 1]`, `deltas [B, R, C, 4]`. Each RoI gives
  one candidate per class: the class's softmax probability and the RoI moved by that class's deltas (Fast R-CNN
  sec. 2.4, torchvision's `RoIHeads.postprocess_detections`).
  """
  scores = jax.nn.softmax(class_logits, axis=-1)[..., 1:]
  scores = jnp.where(roi_valid[..., None], scores, 0.0)
  boxes = decode_boxes(deltas, rois[..., None, :], weights=weights)
  r, c = scores.shape[1:]
  return select_detections(boxes, scores, candidates_per_level=r * c, score_threshold=score_threshold,
                           iou_threshold=iou_threshold, max_detections=max_detections, image_shape=image_shape)
