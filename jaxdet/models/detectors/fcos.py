"""FCOS (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection"): per-location box regression.

Composition: ResNet -> FPN (`ResNetFPN`; the levels above C5 from P5 as in FCOS, `fpn_extra`) -> `FCOSHead`
(class, (l, t, r, b) distances in stride units, centre-ness; towers with group norm, a learned scale per level).
Every cell centre ((j + 0.5) s, (i + 0.5) s) of every level is a location.

- `assign` (on device, per image, vmapped): a location is positive for a ground truth when it lies strictly inside
  the box (with `center_sampling_radius` r > 0, also within r strides of the box centre in x and y: FCOS's centre
  sampling) and the largest of its four distances to the box sides is within its level's range
  [m_{l-1}, m_l] (both ends included, as the reference code). A location that qualifies for several boxes takes
  the one of smallest area (lowest index among equal areas). Crowd boxes are never matched; locations inside one
  that are not positive carry no class loss (as `jaxdet.ops.match_boxes` ignores anchors a crowd box covers).
- `loss`: focal loss on the classes of every non-ignored location / number of positives; on positives, the IoU
  loss -ln IoU of UnitBox (`box_loss="iou"`, the course) or 1 - GIoU (`"giou"`, FCOS's later versions and
  torchvision), either weighted by the centre-ness targets and divided by their sum (the reference code,
  `centerness_weighted_box_loss=True`) or summed and divided by the number of positives (torchvision); and the
  binary cross-entropy of the centre-ness logit against `centerness_target` / number of positives. Positives are
  counted over the batch, at least 1.
- `postprocess`: score sqrt(sigmoid(class) x sigmoid(centre-ness)) (the reference code's and torchvision's
  inference; `sqrt_scores=False` is the paper's plain product); per level the 1,000 best (location, class) pairs
  scoring above `score_threshold`; class-aware NMS at `nms_threshold` (0.6 in FCOS); the best 100. The reference
  thresholds the class probability at 0.05 before multiplying; jaxdet thresholds the final score, as torchvision.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.detector import Detector
from jaxdet.models.detectors.pyramid import (ResNetFPN, check_image_shape, check_num_rows, flatten_levels,
                                             pyramid_shapes)
from jaxdet.models.heads.fcos import FCOSHead
from jaxdet.models.postprocess import select_detections
from jaxdet.ops.boxes import box_area, is_valid_box
from jaxdet.ops.coders import decode_ltrb, encode_ltrb
from jaxdet.ops.losses import centerness_target, giou_loss, iou_loss, sigmoid_binary_cross_entropy, sigmoid_focal_loss

BOX_LOSSES = ("iou", "giou")


class FCOS(nn.Module):
  """Returns the head outputs (`FCOSHead`: per-level logits, ltrb, centre-ness) for images `[B, H, W, 3]`.

  H and W must be multiples of 32. `targets` (given in training by the `Detector` contract) is not used.
  """

  num_classes: int
  depth: int = 18
  width: int = 64
  fpn_features: int = 256
  head_features: int = 256
  num_convs: int = 4
  num_groups: int = 32
  min_level: int = 3
  max_level: int = 7
  fpn_extra: str = "conv_p5"
  prior_prob: float = 0.01
  activation: str = "relu"
  centerness_on_box_tower: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    pyramid = ResNetFPN(depth=self.depth, width=self.width, fpn_features=self.fpn_features,
                        min_level=self.min_level, max_level=self.max_level, extra=self.fpn_extra, dtype=self.dtype,
                        name="body")(images, train=train)
    return FCOSHead(self.num_classes, num_levels=len(pyramid), features=self.head_features,
                    num_convs=self.num_convs, num_groups=self.num_groups, prior_prob=self.prior_prob,
                    activation=self.activation, centerness_on_box_tower=self.centerness_on_box_tower,
                    dtype=self.dtype, name="head")(pyramid)


def fcos_locations(shapes: Sequence[tuple[int, int]], levels: Sequence[int],
                   size_boundaries: Sequence[float]) -> dict[str, np.ndarray]:
  """Returns the locations of all levels, finest first, row-major: `points [N, 2]` (x, y) pixels, `strides [N]`,
  and the range `[lower, upper]` `[N]` of each location's level (level k: boundaries k-1 and k, with 0 before the
  first and infinity after the last; `len(size_boundaries) == len(levels) - 1`)."""
  if len(size_boundaries) != len(levels) - 1:
    raise ValueError(f"FCOS needs {len(levels) - 1} size boundaries between its {len(levels)} levels, got "
                     f"{tuple(size_boundaries)}")
  bounds = [0.0, *(float(b) for b in size_boundaries), math.inf]
  points, strides, lower, upper = [], [], [], []
  for k, (shape, level) in enumerate(zip(shapes, levels)):
    n = shape[0] * shape[1]
    # NumPy (static under jit), the cell centres of `jaxdet.ops.grid_centers`: ((j + 0.5) s, (i + 0.5) s).
    ys, xs = np.meshgrid((np.arange(shape[0]) + 0.5) * 2**level, (np.arange(shape[1]) + 0.5) * 2**level,
                         indexing="ij")
    points.append(np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1).astype(np.float32))
    strides.append(np.full(n, 2.0**level, np.float32))
    lower.append(np.full(n, bounds[k], np.float32))
    upper.append(np.full(n, bounds[k + 1], np.float32))
  return {name: np.concatenate(x) for name, x in
          (("points", points), ("strides", strides), ("lower", lower), ("upper", upper))}


def fcos_targets(points: jax.Array, strides: jax.Array, lower: jax.Array, upper: jax.Array, boxes: jax.Array,
                 labels: jax.Array, valid: jax.Array, crowd: jax.Array, *,
                 center_sampling_radius: float = 0.0) -> dict[str, jax.Array]:
  """Returns one image's FCOS targets (vmap for a batch; see the module docstring for the rules).

  Args:
    points: `[N, 2]` (x, y) pixel locations; strides, lower, upper: `[N]` their level's stride and size range
      (`fcos_locations`). boxes: `[M, 4]` xyxy pixels; labels: int `[M]`; valid, crowd: bool `[M]`.
    center_sampling_radius: r > 0 also requires |x - cx| < r s and |y - cy| < r s (FCOS: 1.5); 0 is off.

  Returns a dict of
    positive: bool `[N]`; ignore: bool `[N]` (inside a crowd box and not positive);
    matched: int32 `[N]` index of the assigned box (0 where not positive); classes: int32 `[N]` its label;
    ltrb: `[N, 4]` distances to its sides / stride; centerness: `[N]` `centerness_target(ltrb)` (0 elsewhere).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  if boxes.shape[0] == 0:  # a batch padded to no boxes: one invalid row keeps the shapes non-empty
    boxes, labels = jnp.zeros((1, 4), jnp.float32), jnp.zeros((1,), jnp.int32)
    valid, crowd = jnp.zeros((1,), bool), jnp.zeros((1,), bool)
  real = jnp.asarray(valid, bool) & is_valid_box(boxes)
  matchable = real & ~jnp.asarray(crowd, bool)
  distances = encode_ltrb(boxes[None, :, :], points[:, None, :])  # [N, M, 4] pixels
  inside = jnp.min(distances, axis=-1) > 0
  candidate = inside
  if center_sampling_radius > 0:
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    reach = center_sampling_radius * strides[:, None, None]
    candidate &= jnp.all(jnp.abs(points[:, None, :] - centers[None, :, :]) < reach, axis=-1)
  largest = jnp.max(distances, axis=-1)
  candidate &= (largest >= lower[:, None]) & (largest <= upper[:, None]) & matchable[None, :]
  matched = jnp.argmin(jnp.where(candidate, box_area(boxes)[None, :], jnp.inf), axis=1).astype(jnp.int32)
  positive = jnp.any(candidate, axis=1)
  ltrb = jnp.take_along_axis(distances, matched[:, None, None], axis=1)[:, 0] / strides[:, None]
  ltrb = jnp.where(positive[:, None], ltrb, 0.0)
  in_crowd = jnp.any(inside & (real & jnp.asarray(crowd, bool))[None, :], axis=1)
  return {"positive": positive, "ignore": in_crowd & ~positive, "matched": jnp.where(positive, matched, 0),
          "classes": jnp.where(positive, jnp.asarray(labels, jnp.int32)[matched], 0), "ltrb": ltrb,
          "centerness": jnp.where(positive, centerness_target(ltrb), 0.0)}


def _as_boxes(ltrb: jax.Array) -> jax.Array:
  """`[..., 4]` xyxy boxes of distances from the origin: GIoU of these equals GIoU of the decoded boxes."""
  return jnp.stack([-ltrb[..., 0], -ltrb[..., 1], ltrb[..., 2], ltrb[..., 3]], axis=-1)


def fcos_loss(outputs: dict[str, Sequence[jax.Array]], targets: dict[str, jax.Array], *, num_classes: int,
              alpha: float = 0.25, gamma: float = 2.0, box_loss: str = "iou",
              centerness_weighted_box_loss: bool = True, box_weight: float = 1.0
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: class focal loss + box_weight x box loss + centre-ness BCE (module docstring)."""
  logits = flatten_levels(outputs["logits"], num_classes)
  ltrb = flatten_levels(outputs["ltrb"], 4)
  centerness = flatten_levels(outputs["centerness"], 1)[..., 0]
  check_num_rows(logits, targets["positive"].shape[1], "FCOS loss")
  positive = targets["positive"]
  num_positive = jnp.sum(positive)
  normalizer = jnp.maximum(num_positive, 1).astype(jnp.float32)
  onehot = jax.nn.one_hot(targets["classes"], num_classes, dtype=jnp.float32) * positive[..., None]
  focal = jnp.sum(sigmoid_focal_loss(logits, onehot, alpha=alpha, gamma=gamma), axis=-1)
  cls_loss = jnp.sum(jnp.where(targets["ignore"], 0.0, focal)) / normalizer

  if box_loss == "iou":
    per_location = iou_loss(ltrb, targets["ltrb"])
  else:
    per_location = giou_loss(_as_boxes(ltrb), _as_boxes(targets["ltrb"]))
  if centerness_weighted_box_loss:
    weights = jnp.where(positive, targets["centerness"], 0.0)
    total = jnp.sum(weights)
    reg_loss = jnp.where(total > 0, jnp.sum(weights * per_location) / jnp.where(total > 0, total, 1.0), 0.0)
  else:
    reg_loss = jnp.sum(jnp.where(positive, per_location, 0.0)) / normalizer
  bce = sigmoid_binary_cross_entropy(centerness, targets["centerness"])
  ctr_loss = jnp.sum(jnp.where(positive, bce, 0.0)) / normalizer
  loss = cls_loss + box_weight * reg_loss + ctr_loss
  return loss, {"loss": loss, "cls_loss": cls_loss, "box_loss": reg_loss, "centerness_loss": ctr_loss,
                "positives_per_image": num_positive.astype(jnp.float32) / positive.shape[0]}


def build_fcos(*, num_classes: int, depth: int = 18, width: int = 64, fpn_features: int = 256,
               head_features: int = 256, num_convs: int = 4, num_groups: int = 32, min_level: int = 3,
               max_level: int = 7, fpn_extra: str = "conv_p5", size_boundaries: Sequence[float] = (64, 128, 256, 512),
               center_sampling_radius: float = 1.5, prior_prob: float = 0.01, activation: str = "relu",
               centerness_on_box_tower: bool = True, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
               box_loss: str = "iou", centerness_weighted_box_loss: bool = True, box_weight: float = 1.0,
               sqrt_scores: bool = True, candidates_per_level: int = 1000, score_threshold: float = 0.05,
               nms_threshold: float = 0.6, max_detections: int = 100, dtype: Any = jnp.float32) -> Detector:
  """Returns the FCOS `Detector`: the module and its `assign`, `loss`, `postprocess` (module docstring).

  `size_boundaries` are the m_1..m_{L-1} between the L levels (FCOS on P3-P7: 64, 128, 256, 512; m_0 = 0 and
  m_L = infinity). `dtype` is the compute type of the convolutions; outputs, targets, losses and boxes are float32.
  """
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"FCOS computes in float32, bfloat16 or float16, got dtype {dtype}")
  if box_loss not in BOX_LOSSES:
    raise ValueError(f"FCOS box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
  levels = tuple(range(min_level, max_level + 1))
  boundaries = tuple(float(b) for b in size_boundaries)
  if len(boundaries) != len(levels) - 1 or any(b <= a for a, b in zip(boundaries, boundaries[1:])):
    raise ValueError(f"FCOS size_boundaries must be {len(levels) - 1} increasing numbers for levels {levels}, "
                     f"got {boundaries}")
  module = FCOS(num_classes=num_classes, depth=depth, width=width, fpn_features=fpn_features,
                head_features=head_features, num_convs=num_convs, num_groups=num_groups, min_level=min_level,
                max_level=max_level, fpn_extra=fpn_extra, prior_prob=prior_prob, activation=activation,
                centerness_on_box_tower=centerness_on_box_tower, dtype=dtype)

  def assign(batch):
    check_image_shape(batch["image"].shape[1:3], "FCOS")
    loc = fcos_locations(pyramid_shapes(batch["image"].shape[1:3], levels), levels, boundaries)
    one = lambda b, l, v, c: fcos_targets(loc["points"], loc["strides"], loc["lower"], loc["upper"],  # noqa: E731
                                          b, l, v, c, center_sampling_radius=center_sampling_radius)
    return jax.vmap(one)(batch["boxes"], batch["labels"], batch["valid"], batch["crowd"])

  def loss(outputs, targets):
    return fcos_loss(outputs, targets, num_classes=num_classes, alpha=focal_alpha, gamma=focal_gamma,
                     box_loss=box_loss, centerness_weighted_box_loss=centerness_weighted_box_loss,
                     box_weight=box_weight)

  def postprocess(outputs, image_shape=None):
    shapes = [m.shape[1:3] for m in outputs["logits"]]
    loc = fcos_locations(shapes, levels, boundaries)
    scores = jax.nn.sigmoid(flatten_levels(outputs["logits"], num_classes))
    scores = scores * jax.nn.sigmoid(flatten_levels(outputs["centerness"], 1))
    if sqrt_scores:
      scores = jnp.sqrt(scores)
    ltrb = flatten_levels(outputs["ltrb"], 4) * loc["strides"][None, :, None]
    boxes = decode_ltrb(ltrb, loc["points"][None])
    return select_detections(boxes, scores, level_sizes=[h * w for h, w in shapes],
                             candidates_per_level=candidates_per_level, score_threshold=score_threshold,
                             iou_threshold=nms_threshold, max_detections=max_detections, image_shape=image_shape)

  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes)
