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
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.darknet import DARKNET53_DEPTHS, Darknet53
from jaxdet.models.detector import Detections, Detector
from jaxdet.models.heads.yolo import YOLOHead
from jaxdet.models.heads.yolo_loss import decode_yolo_boxes, yolo_targets, yolov3_loss
from jaxdet.models.necks.yolov3 import YOLOv3Neck
from jaxdet.models.postprocess import select_detections
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
  """

  num_classes: int
  anchors_per_scale: int = 3
  width: int = 32
  depths: Sequence[int] = DARKNET53_DEPTHS
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    features = Darknet53(width=self.width, depths=tuple(self.depths), dtype=self.dtype, name="backbone")(
        x, train=train)
    detect = YOLOv3Neck(strides=STRIDES, width=self.width, dtype=self.dtype, name="neck")(features, train=train)
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
                  score_threshold: float = 0.005, iou_threshold: float = 0.45,
                  max_detections: int = 100) -> Detections:
  """Returns `Detections`: every anchor's box of every scale scored per class by sigma(to) x sigma(class), kept
  above `score_threshold`, per-class NMS at `iou_threshold` (darknet's 0.45) over all scales, the best
  `max_detections`; `anchors` per scale `[A, 2]` pixels (`split_anchors`)."""
  flat, grid_shapes = _flatten(outputs["raw"])
  boxes = decode_yolo_boxes(flat, grid_shapes=grid_shapes, strides=STRIDES, anchors=anchors)
  scores = jax.nn.sigmoid(flat[..., 4:5]) * jax.nn.sigmoid(flat[..., 5:])
  level_sizes = [h * w * a.shape[0] for (h, w), a in zip(grid_shapes, anchors, strict=True)]
  h, w = grid_shapes[0]
  size = tuple(image_shape) if image_shape is not None else (h * STRIDES[0], w * STRIDES[0])
  return select_detections(boxes, scores, level_sizes=level_sizes,
                           candidates_per_level=max(level_sizes) * scores.shape[-1], score_threshold=score_threshold,
                           iou_threshold=iou_threshold, max_detections=max_detections, image_shape=size)


def build_yolov3(*, num_classes: int, anchors: Sequence[Sequence[float]] = COCO_ANCHORS, width: int = 32,
                 depths: Sequence[int] = DARKNET53_DEPTHS, coord_scale: float = 1.0, object_scale: float = 1.0,
                 noobject_scale: float = 1.0, class_scale: float = 1.0, ignore_threshold: float = 0.5,
                 score_threshold: float = 0.005, iou_threshold: float = 0.45, max_detections: int = 100,
                 dtype: Any = jnp.float32) -> Detector:
  """Returns the YOLOv3 `Detector` (see the module docstring); `anchors` are (w, h) pairs in input pixels, a
  multiple of 3 of them (split by `split_anchors` over strides 8, 16, 32)."""
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"YOLOv3 computes in float32, bfloat16 or float16, got dtype {dtype}")
  per_scale = split_anchors(anchors)
  module = YOLOv3(num_classes=num_classes, anchors_per_scale=per_scale[0].shape[0], width=width, depths=tuple(depths),
                  dtype=dtype)

  def assign(batch):
    _, h, w, _ = batch["image"].shape
    if h % STRIDES[-1] or w % STRIDES[-1]:
      raise ValueError(f"YOLOv3 needs image sides that are multiples of {STRIDES[-1]}, got {h}x{w}")
    grids = [(h // s, w // s) for s in STRIDES]
    targets_fn = lambda b, l, v, c: yolo_targets(  # noqa: E731
        b, l, v, c, grid_shapes=grids, strides=STRIDES, anchors=per_scale)
    return jax.vmap(targets_fn)(batch["boxes"], batch["labels"], batch["valid"], batch["crowd"])

  def loss(outputs, targets):
    flat, grid_shapes = _flatten(outputs["raw"])
    return yolov3_loss(flat, targets, grid_shapes=grid_shapes, strides=STRIDES, anchors=per_scale,
                       coord_scale=coord_scale, object_scale=object_scale, noobject_scale=noobject_scale,
                       class_scale=class_scale, ignore_threshold=ignore_threshold)

  def postprocess(outputs, image_shape=None):
    return yolov3_decode(outputs, anchors=per_scale, image_shape=image_shape, score_threshold=score_threshold,
                         iou_threshold=iou_threshold, max_detections=max_detections)

  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes)
