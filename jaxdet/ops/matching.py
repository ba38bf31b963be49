"""IoU-threshold matching of anchors (or proposals) to padded ground truth.

Labels follow torchvision / detectron2: 1 foreground, 0 background, -1 ignored (no loss). Presets:
  RPN (Faster R-CNN sec. 3.1.2): fg IoU >= 0.7, bg IoU < 0.3, each ground truth's best anchor(s) forced fg.
  Fast R-CNN (sec. 2.3): fg IoU >= 0.5, bg IoU in [0.1, 0.5); below 0.1 ignored.
  SSD (Liu et al. 2016, sec. 2.2): each ground truth's best prior forced fg, then fg IoU > 0.5, the rest bg.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from jaxdet.ops.boxes import box_area, is_valid_box
from jaxdet.ops.iou import pairwise_iou

FOREGROUND = 1
BACKGROUND = 0
IGNORE = -1


@flax.struct.dataclass
class MatchResult:
  """Per-anchor matching outcome.

  Attributes:
    labels: int32 `[N]`, FOREGROUND / BACKGROUND / IGNORE.
    matched_gt: int32 `[N]` index of the ground truth of highest IoU (use only where labels == FOREGROUND).
    max_iou: float32 `[N]` IoU with that ground truth (0 when there is none).
  """

  labels: jax.Array
  matched_gt: jax.Array
  max_iou: jax.Array


def _intersection_over_first(a: jax.Array, b: jax.Array) -> jax.Array:
  """`[N, M]` area(a_i ∩ b_j) / area(a_i): how much of each anchor a crowd region covers."""
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  area = box_area(a)[:, None]
  return jnp.where(area > 0, inter / jnp.where(area > 0, area, 1.0), 0.0)


def match_boxes(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, *, fg_threshold: float,
                bg_threshold: float | None = None, bg_low_threshold: float = 0.0,
                allow_low_quality_matches: bool = False, force_best_match: bool = False,
                gt_crowd: jax.Array | None = None, crowd_ioa_threshold: float = 0.5) -> MatchResult:
  """Returns a `MatchResult` labelling each anchor against padded ground truth by IoU thresholds.

  An anchor is foreground when its highest IoU with a valid, non-crowd ground truth is >= `fg_threshold`,
  background when that IoU is in [`bg_low_threshold`, `bg_threshold`), and ignored otherwise. With
  `allow_low_quality_matches`, every anchor whose IoU with some ground truth equals that ground truth's highest IoU
  (ties included, IoU > 0) becomes foreground, matched to its own best ground truth (torchvision's `Matcher`;
  differs in requiring IoU > 0, where torchvision would also promote anchors of a ground truth no anchor overlaps).
  With `force_best_match` (SSD's first matching step, after MultiBox), each valid, non-crowd ground truth's single
  best anchor (the lowest index among ties; IoU > 0) becomes foreground matched to *that* ground truth, even when
  the anchor overlaps another ground truth more; an anchor that is the best of several ground truths takes the one
  it overlaps most (the lowest index among ties). ssd.pytorch's `match` gives such an anchor to the ground truth
  listed last, torchvision's `SSDMatcher` to whichever its scatter writes last.
  Anchors covered by a crowd region (intersection / anchor area >= `crowd_ioa_threshold`) that are not
  foreground are ignored rather than trained as background; crowd boxes are never matched. Degenerate anchors are
  ignored. With no valid ground truth every valid anchor is background (when `bg_low_threshold` <= 0).

  Args:
    anchors: `[N, 4]` xyxy pixels.
    gt_boxes: `[M, 4]` xyxy pixels, padded.
    gt_valid: bool `[M]`, which ground-truth rows are real.
    fg_threshold: minimum IoU of a foreground anchor.
    bg_threshold: IoU below which an anchor is background (default: `fg_threshold`, no ignore band).
    bg_low_threshold: IoU below which an anchor is ignored instead of background (Fast R-CNN: 0.1).
    allow_low_quality_matches: force each ground truth's best anchors to foreground (RPN).
    force_best_match: force each ground truth's one best anchor to foreground, matched to it (SSD).
    gt_crowd: optional bool `[M]`, COCO `iscrowd` flags.
    crowd_ioa_threshold: coverage by a crowd region above which a non-foreground anchor is ignored.
  """
  bg_threshold = fg_threshold if bg_threshold is None else bg_threshold
  gt_valid = jnp.asarray(gt_valid, bool) & is_valid_box(gt_boxes)
  crowd = jnp.zeros_like(gt_valid) if gt_crowd is None else jnp.asarray(gt_crowd, bool)
  matchable = gt_valid & ~crowd
  iou = jnp.where(matchable[None, :], pairwise_iou(anchors, gt_boxes), -1.0)
  if iou.shape[1] == 0:
    iou = jnp.full((iou.shape[0], 1), -1.0)
  matched_gt = jnp.argmax(iou, axis=1).astype(jnp.int32)
  max_iou = jnp.maximum(jnp.max(iou, axis=1), 0.0)

  labels = jnp.full(max_iou.shape, IGNORE, jnp.int32)
  labels = jnp.where((max_iou >= bg_low_threshold) & (max_iou < bg_threshold), BACKGROUND, labels)
  labels = jnp.where(max_iou >= fg_threshold, FOREGROUND, labels)
  if allow_low_quality_matches:
    best_per_gt = jnp.max(iou, axis=0)
    is_best = (iou == best_per_gt[None, :]) & (best_per_gt[None, :] > 0) & matchable[None, :]
    labels = jnp.where(jnp.any(is_best, axis=1), FOREGROUND, labels)
  if force_best_match:
    # Unmatchable columns (padding, crowd, degenerate) hold -1, so a positive best IoU means a matchable truth.
    best_anchor = jnp.argmax(iou, axis=0)
    forcing = jnp.max(iou, axis=0) > 0
    forced = (best_anchor[None, :] == jnp.arange(iou.shape[0])[:, None]) & forcing[None, :]  # [N, M]
    forced_iou = jnp.where(forced, iou, -1.0)
    is_forced = jnp.any(forced, axis=1)
    matched_gt = jnp.where(is_forced, jnp.argmax(forced_iou, axis=1).astype(jnp.int32), matched_gt)
    max_iou = jnp.where(is_forced, jnp.max(forced_iou, axis=1), max_iou)
    labels = jnp.where(is_forced, FOREGROUND, labels)
  if gt_crowd is not None:
    ioa = _intersection_over_first(anchors, jnp.where(gt_valid[:, None], gt_boxes, 0.0))
    covered = jnp.any((ioa >= crowd_ioa_threshold) & (gt_valid & crowd)[None, :], axis=1)
    labels = jnp.where(covered & (labels != FOREGROUND), IGNORE, labels)
  labels = jnp.where(is_valid_box(anchors), labels, IGNORE)
  return MatchResult(labels=labels, matched_gt=matched_gt, max_iou=max_iou)


def match_rpn(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
              gt_crowd: jax.Array | None = None) -> MatchResult:
  """Returns the RPN `MatchResult` (Faster R-CNN sec. 3.1.2): fg >= 0.7, bg < 0.3, each ground truth's best anchor
  forced fg. `anchors [N, 4]`, `gt_boxes [M, 4]` xyxy pixels; `gt_valid`, `gt_crowd` bool `[M]`; results `[N]`."""
  return match_boxes(anchors, gt_boxes, gt_valid, fg_threshold=0.7, bg_threshold=0.3,
                     allow_low_quality_matches=True, gt_crowd=gt_crowd)


def match_fast_rcnn(proposals: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
                    gt_crowd: jax.Array | None = None) -> MatchResult:
  """Returns the Fast R-CNN RoI `MatchResult` (sec. 2.3): fg >= 0.5, bg in [0.1, 0.5), below 0.1 ignored.
  `proposals [N, 4]`, `gt_boxes [M, 4]` xyxy pixels; `gt_valid`, `gt_crowd` bool `[M]`; results `[N]`."""
  return match_boxes(proposals, gt_boxes, gt_valid, fg_threshold=0.5, bg_threshold=0.5, bg_low_threshold=0.1,
                     gt_crowd=gt_crowd)


def match_ssd(priors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, gt_crowd: jax.Array | None = None, *,
              threshold: float = 0.5) -> MatchResult:
  """Returns SSD's `MatchResult` (Liu et al. 2016, sec. 2.2): each ground truth's best prior forced fg and matched
  to it, then every other prior fg when its best IoU is at least `threshold` (0.5), the rest bg (no ignore band).

  The paper says "higher than 0.5"; ssd.pytorch and torchvision's `SSDMatcher` make IoU = 0.5 foreground, as here.
  `priors [N, 4]`, `gt_boxes [M, 4]` xyxy pixels; `gt_valid`, `gt_crowd` bool `[M]`; results `[N]`.
  """
  return match_boxes(priors, gt_boxes, gt_valid, fg_threshold=threshold, bg_threshold=threshold,
                     force_best_match=True, gt_crowd=gt_crowd)
