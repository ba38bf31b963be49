"""YOLOv3 (Redmon & Farhadi 2018, "YOLOv3: An Incremental Improvement"): three output scales joined by upsampling
and concatenation, nine k-means anchors, independent logistic classes.

Composition (darknet `yolov3.cfg`): Darknet-53 -> `YOLOv3Neck` (from stride 32 down to 8: five convolutions, a 3x3
convolution to the scale's detection features, a 1x1 reduction upsampled 2x and concatenated with the next finer
backbone map) -> at each scale a 1x1 convolution to A (5 + C) channels per cell (`YOLOHead`, A = 3). Each anchor
predicts the box sigma(tx) + c_x, sigma(ty) + c_y (cells), p_w e^tw, p_h e^th, objectness sigma(to) and per-class
probabilities sigma(class logit), each class its own logistic classifier.

Anchors are (w, h) in input pixels, sorted by area and split in equal groups over the scales, finest first: in the
paper nine, the three smallest at stride 8, the three largest at stride 32 (`experiments/yolo_anchors.py` computes
them for a config). As in darknet they stay in pixels under multi-scale training (YOLOv2's are grid units instead).

Targets are the shared anchor-based YOLO ones (`jaxdet.models.heads.yolo_loss.yolo_targets`): each object goes to
the best of all nine anchors by shape IoU, at that anchor's scale, in the cell holding its centre. The loss is
`yolov3_loss` (BCE on x, y, objectness and classes, squared error on the log sizes, ignore rule at 0.5 over the
predictions of every scale). Inference scores sigma(to) x sigma(class), thresholds, and runs per-class NMS over the
boxes of all scales together.

`yolo_detector` builds the `Detector` around any module with this output (YOLOv4's too, `yolov4.py`), with YOLOv4's
training and inference tricks as options, all off by default so that YOLOv3 stays the paper's: several anchors per
object above a shape-IoU threshold (`anchor_iou_threshold`), grid sensitivity (`xy_scale`), CIoU box loss
(`box_loss`), label smoothing, DIoU-NMS (`nms`), self-adversarial training (`sat_steps`); CmBN is the module's
`cmbn`. Each can so be tried on YOLOv3 alone (the ablation of the YOLOv4 paper's Table 4).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.backbones.darknet import DARKNET53_DEPTHS, Darknet53
from jaxdet.models.detector import Detections, Detector
from jaxdet.models.heads.yolo import YOLOHead
from jaxdet.models.heads.yolo_loss import decode_yolo_boxes, yolo_targets, yolov3_loss
from jaxdet.models.necks.yolov3 import YOLOv3Neck
from jaxdet.models.postprocess import select_detections
from jaxdet.models.self_adversarial import self_adversarial_batch
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image

STRIDES = (8, 16, 32)
# YOLOv3's COCO anchors (yolov3.cfg, pixels at 416 x 416), for reference; configs compute their own.
COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))


class YOLOv3(nn.Module):
  """Returns `{"raw": ([B, H / 8, W / 8, A, 5 + C], [B, H / 16, ...], [B, H / 32, ...])}` for images
  `[B, H, W, 3]`, H and W multiples of 32 (multi-scale training), A anchors per scale.

  Attributes:
    width: Darknet-53's first-layer channels (32 in the paper); the neck's widths scale with it.
    depths: Darknet-53's residual blocks per stage ((1, 2, 8, 8, 4) in the paper).
    cmbn: CmBN mini-batches of every batch norm (`jaxdet.models.cmbn`); 1: plain batch norm (the paper).
  """

  num_classes: int
  anchors_per_scale: int = 3
  width: int = 32
  depths: Sequence[int] = DARKNET53_DEPTHS
  cmbn: int = 1
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    features = Darknet53(width=self.width, depths=tuple(self.depths), cmbn=self.cmbn, dtype=self.dtype,
                         name="backbone")(x, train=train)
    detect = YOLOv3Neck(strides=STRIDES, width=self.width, cmbn=self.cmbn, dtype=self.dtype, name="neck")(
        features, train=train)
    raw = tuple(YOLOHead(self.num_classes, self.anchors_per_scale, dtype=self.dtype, name=f"head{s}")(detect[s])
                for s in STRIDES)
    return {"raw": raw}


def split_anchors(anchors: Sequence[Sequence[float]], num_scales: int = len(STRIDES)) -> list[jax.Array]:
  """Returns `num_scales` arrays `[A, 2]`: `anchors` (w, h) pairs sorted by area (stable), in equal consecutive
  groups, the smallest first (the finest scale's)."""
  anchors = jnp.asarray(anchors, jnp.float32)
  if anchors.ndim != 2 or anchors.shape[1] != 2 or not bool(jnp.all(anchors > 0)):
    raise ValueError(f"anchors must be positive (w, h) pairs in pixels, got {anchors.tolist()}")
  if anchors.shape[0] % num_scales:
    raise ValueError(f"{anchors.shape[0]} anchors do not split evenly over {num_scales} scales")
  anchors = anchors[jnp.argsort(anchors[:, 0] * anchors[:, 1], stable=True)]
  return list(anchors.reshape(num_scales, -1, 2))


def _flatten(raw: Sequence[jax.Array]) -> tuple[jax.Array, list[tuple[int, int]]]:
  grid_shapes = [tuple(r.shape[1:3]) for r in raw]
  return jnp.concatenate([r.reshape(r.shape[0], -1, r.shape[-1]) for r in raw], axis=1), grid_shapes


def yolov3_decode(outputs: dict[str, Any], *, anchors: Sequence[jax.Array], image_shape: tuple[int, int] | None = None,
                  score_threshold: float = 0.005, iou_threshold: float = 0.45, max_detections: int = 100,
                  xy_scale: float | Sequence[float] = 1.0, nms: str = "iou", diou_beta: float = 1.0) -> Detections:
  """Returns `Detections`: every anchor's box of every scale scored per class by sigma(to) x sigma(class), kept
  above `score_threshold`, per-class NMS at `iou_threshold` (darknet's 0.45) over all scales, the best
  `max_detections`; `anchors` per scale `[A, 2]` pixels (`split_anchors`). YOLOv4: `xy_scale` the grid
  sensitivity (`decode_yolo_boxes`), `nms="diou"` DIoU-NMS with exponent `diou_beta`."""
  flat, grid_shapes = _flatten(outputs["raw"])
  boxes = decode_yolo_boxes(flat, grid_shapes=grid_shapes, strides=STRIDES, anchors=anchors, xy_scale=xy_scale)
  scores = jax.nn.sigmoid(flat[..., 4:5]) * jax.nn.sigmoid(flat[..., 5:])
  level_sizes = [h * w * a.shape[0] for (h, w), a in zip(grid_shapes, anchors, strict=True)]
  h, w = grid_shapes[0]
  size = tuple(image_shape) if image_shape is not None else (h * STRIDES[0], w * STRIDES[0])
  return select_detections(boxes, scores, level_sizes=level_sizes,
                           candidates_per_level=max(level_sizes) * scores.shape[-1], score_threshold=score_threshold,
                           iou_threshold=iou_threshold, max_detections=max_detections, image_shape=size, nms=nms,
                           diou_beta=diou_beta)


def check_dtype(dtype: Any, name: str) -> Any:
  """Returns `dtype` as a NumPy dtype; float32, bfloat16 or float16, else a ValueError naming the detector."""
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"{name} computes in float32, bfloat16 or float16, got dtype {dtype}")
  return dtype


def yolo_detector(module: nn.Module, per_scale: Sequence[jax.Array], *, num_classes: int, name: str = "YOLOv3",
                  coord_scale: float = 1.0, object_scale: float = 1.0, noobject_scale: float = 1.0,
                  class_scale: float = 1.0, ignore_threshold: float = 0.5, score_threshold: float = 0.005,
                  iou_threshold: float = 0.45, max_detections: int = 100, anchor_iou_threshold: float | None = None,
                  xy_scale: float | Sequence[float] = 1.0, box_loss: str = "yolov3", label_smoothing: float = 0.0,
                  nms: str = "iou", diou_beta: float = 1.0, sat_steps: int = 0, sat_epsilon: float = 4.0,
                  sat_prob: float = 0.5) -> Detector:
  """Returns the `Detector` of a three-scale YOLO `module` (output `{"raw": (...)}` at strides 8, 16, 32) with
  anchors `per_scale` (`split_anchors`): YOLOv3's assignment, loss and decoding plus YOLOv4's tricks, each off by
  default (module docstring):
    anchor_iou_threshold: None (or 1), or every anchor above this shape IoU is responsible too (`yolo_targets`;
      darknet 0.213);
    xy_scale: grid sensitivity s, one or one per scale (1: off; darknet yolov4.cfg 1.2, 1.1, 1.05);
    box_loss: "yolov3" or "ciou" (`yolov3_loss`); label_smoothing: eps (0: off);
    nms: "iou" or "diou" (DIoU-NMS with exponent `diou_beta`);
    sat_steps: self-adversarial steps of `sat_epsilon` pixels before a training step (0: off), on a random
      `sat_prob` of the steps (darknet's half; 1: every step).
  """
  if anchor_iou_threshold is not None and not 0.0 <= anchor_iou_threshold <= 1.0:
    raise ValueError(f"anchor_iou_threshold must be None or in [0, 1] (1: the best anchor only), got "
                     f"{anchor_iou_threshold}")
  if sat_steps < 0:
    raise ValueError(f"sat_steps must be >= 0 (0: no self-adversarial training), got {sat_steps}")
  if not 0.0 < sat_prob <= 1.0:
    raise ValueError(f"sat_prob, the fraction of steps attacked, must be in (0, 1], got {sat_prob}")
  xy_scale = tuple(float(v) for v in xy_scale) if isinstance(xy_scale, (tuple, list)) else float(xy_scale)
  if isinstance(xy_scale, tuple) and len(xy_scale) != len(STRIDES) or min(np.atleast_1d(xy_scale)) < 1.0:
    raise ValueError(f"xy_scale must be one factor >= 1 or one per scale ({len(STRIDES)}), got {xy_scale}")

  def assign(batch):
    _, h, w, _ = batch["image"].shape
    if h % STRIDES[-1] or w % STRIDES[-1]:
      raise ValueError(f"{name} needs image sides that are multiples of {STRIDES[-1]}, got {h}x{w}")
    grids = [(h // s, w // s) for s in STRIDES]
    targets_fn = lambda b, l, v, c: yolo_targets(  # noqa: E731
        b, l, v, c, grid_shapes=grids, strides=STRIDES, anchors=per_scale, anchor_iou_threshold=anchor_iou_threshold)
    return jax.vmap(targets_fn)(batch["boxes"], batch["labels"], batch["valid"], batch["crowd"])

  def loss(outputs, targets):
    flat, grid_shapes = _flatten(outputs["raw"])
    return yolov3_loss(flat, targets, grid_shapes=grid_shapes, strides=STRIDES, anchors=per_scale,
                       coord_scale=coord_scale, object_scale=object_scale, noobject_scale=noobject_scale,
                       class_scale=class_scale, ignore_threshold=ignore_threshold, box_loss=box_loss,
                       xy_scale=xy_scale, label_smoothing=label_smoothing)

  def postprocess(outputs, image_shape=None):
    return yolov3_decode(outputs, anchors=per_scale, image_shape=image_shape, score_threshold=score_threshold,
                         iou_threshold=iou_threshold, max_detections=max_detections, xy_scale=xy_scale, nms=nms,
                         diou_beta=diou_beta)

  def hide_objects(outputs, targets):
    # SAT's stage-1 objective: the objectness cross-entropy (target 1) of the predictors responsible for objects;
    # raising it lowers their objectness alone, where raising the whole loss also raises the background's.
    flat, _ = _flatten(outputs["raw"])
    positive = targets["positive"]
    missed = jnp.where(positive, jax.nn.softplus(-flat[..., 4]), 0.0)
    return (jnp.sum(missed) / jnp.maximum(jnp.sum(positive), 1),)

  alter_batch = None
  if sat_steps:
    alter_batch = self_adversarial_batch(module, hide_objects, steps=sat_steps, epsilon=sat_epsilon)
  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes,
                  alter_batch=alter_batch, alter_prob=sat_prob)


def build_yolov3(*, num_classes: int, anchors: Sequence[Sequence[float]] = COCO_ANCHORS, width: int = 32,
                 depths: Sequence[int] = DARKNET53_DEPTHS, cmbn: int = 1, dtype: Any = jnp.float32,
                 **options: Any) -> Detector:
  """Returns the YOLOv3 `Detector` (see the module docstring); `anchors` are (w, h) pairs in input pixels, a
  multiple of 3 of them (split by `split_anchors` over strides 8, 16, 32). `options` are `yolo_detector`'s (loss
  weights, thresholds, and the YOLOv4 tricks, all off unless given); `cmbn` > 1 turns batch norm into CmBN."""
  per_scale = split_anchors(anchors)
  module = YOLOv3(num_classes=num_classes, anchors_per_scale=per_scale[0].shape[0], width=width, depths=tuple(depths),
                  cmbn=cmbn, dtype=check_dtype(dtype, "YOLOv3"))
  return yolo_detector(module, per_scale, num_classes=num_classes, name="YOLOv3", **options)
