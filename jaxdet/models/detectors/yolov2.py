"""YOLOv2 (Redmon & Farhadi 2017, "YOLO9000: Better, Faster, Stronger"): a fully convolutional grid detector with
k-means anchors.

Composition (darknet `yolo-voc.cfg`): Darknet-19 with batch norm -> two 3x3 convolutions -> the passthrough layer
(the map at half the output stride, 1x1-reduced and space-to-depth'ed, concatenated) -> a 3x3 convolution -> a
1x1 convolution to A (5 + C) channels per cell (`YOLOHead`). Each anchor predicts the box sigma(tx) + c_x,
sigma(ty) + c_y, p_w e^tw, p_h e^th (grid units), objectness sigma(to) trained towards the IoU with its object,
and softmax class probabilities. Targets, the ignore rule and the loss are the shared anchor-based YOLO ones
(`jaxdet.models.heads.yolo_loss`, YOLOv2's terms); inference scores sigma(to) x P(class), thresholds and runs
per-class NMS.

Anchors are (w, h) in grid cells of the output map, k-means clusters of the training boxes with the distance
1 - IoU (`experiments/yolo_anchors.py` computes them for a config). Because the grid scales with the input,
multi-scale training keeps the anchors in grid units: at each input size they are `anchors x output_stride` pixels.

The prior-matching term of the first `prior_images` images needs the number of images trained on: the module
counts them in a `batch_stats` variable `images_seen` (so it is checkpointed and resumed with the model) and
returns the count before the current batch as `outputs["images_seen"]`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.darknet import ConvBNLeaky, Darknet19
from jaxdet.models.detector import Detections, Detector
from jaxdet.models.heads.yolo import YOLOHead
from jaxdet.models.heads.yolo_loss import decode_yolo_boxes, yolo_loss, yolo_targets
from jaxdet.models.necks.passthrough import Passthrough
from jaxdet.models.postprocess import select_detections
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image

# YOLOv2's VOC priors (yolo-voc.cfg, grid units at 13 x 13), for reference; configs compute their own.
VOC_ANCHORS = ((1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071))


class YOLOv2(nn.Module):
  """Returns `{"raw": [B, H / s, W / s, A, 5 + C], "images_seen": int32 scalar}` for images `[B, H, W, 3]`, s the
  output stride; any H, W that are multiples of s (multi-scale training).

  Attributes:
    width: Darknet-19's first-layer channels (32 in the paper); the detection convolutions have 32 x width
      (1024), the passthrough's 1x1 reduction 2 x width (64).
    output_stride: 32 in the paper; 16 removes Darknet-19's last max pool.
    batch_norm: after every convolution (the paper); off only for the ablation.
    passthrough: concatenate the fine-grained features (the paper); off only for the ablation.
  """

  num_classes: int
  num_anchors: int = 5
  width: int = 32
  output_stride: int = 32
  batch_norm: bool = True
  passthrough: bool = True
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    features = Darknet19(width=self.width, output_stride=self.output_stride, batch_norm=self.batch_norm,
                         dtype=self.dtype, name="backbone")(x, train=train)
    conv = lambda c, k, name: ConvBNLeaky(c, k, batch_norm=self.batch_norm, dtype=self.dtype, name=name)  # noqa: E731
    y = conv(32 * self.width, 3, "detect1")(features[self.output_stride], train=train)
    y = conv(32 * self.width, 3, "detect2")(y, train=train)
    if self.passthrough:
      y = Passthrough(2 * self.width, batch_norm=self.batch_norm, dtype=self.dtype, name="passthrough")(
          features[self.output_stride // 2], y, train=train)
    y = conv(32 * self.width, 3, "detect3")(y, train=train)
    raw = YOLOHead(self.num_classes, self.num_anchors, dtype=self.dtype, name="head")(y)
    seen = self.variable("batch_stats", "images_seen", lambda: jnp.zeros((), jnp.int32))
    before = seen.value
    if train and not self.is_initializing():
      seen.value = before + images.shape[0]
    return {"raw": raw, "images_seen": before}


def _geometry(raw: jax.Array, stride: int, anchors: jax.Array):
  _, h, w, _, _ = raw.shape
  return [(h, w)], [stride], [anchors * stride]


def yolov2_decode(outputs: dict[str, Any], *, output_stride: int, anchors: jax.Array,
                  image_shape: tuple[int, int] | None = None, score_threshold: float = 0.005,
                  iou_threshold: float = 0.5, max_detections: int = 100) -> Detections:
  """Returns `Detections`: every anchor's box scored per class by sigma(to) x softmax(class), kept above
  `score_threshold`, per-class NMS at `iou_threshold`, the best `max_detections`; `anchors [A, 2]` grid units."""
  raw = outputs["raw"]
  b, h, w, a, _ = raw.shape
  grid_shapes, strides, anchors_px = _geometry(raw, output_stride, anchors)
  flat = raw.reshape(b, h * w * a, -1)
  boxes = decode_yolo_boxes(flat, grid_shapes=grid_shapes, strides=strides, anchors=anchors_px)
  scores = jax.nn.sigmoid(flat[..., 4:5]) * jax.nn.softmax(flat[..., 5:], axis=-1)
  size = tuple(image_shape) if image_shape is not None else (h * output_stride, w * output_stride)
  return select_detections(boxes, scores, candidates_per_level=h * w * a * scores.shape[-1],
                           score_threshold=score_threshold, iou_threshold=iou_threshold,
                           max_detections=max_detections, image_shape=size)


def build_yolov2(*, num_classes: int, anchors: Sequence[Sequence[float]] = VOC_ANCHORS, width: int = 32,
                 output_stride: int = 32, batch_norm: bool = True, passthrough: bool = True,
                 coord_scale: float = 1.0, object_scale: float = 5.0, noobject_scale: float = 1.0,
                 class_scale: float = 1.0, ignore_threshold: float = 0.6, prior_images: int = 12800,
                 score_threshold: float = 0.005, iou_threshold: float = 0.5, max_detections: int = 100,
                 dtype: Any = jnp.float32) -> Detector:
  """Returns the YOLOv2 `Detector` (see the module docstring); `anchors` are (w, h) pairs in output-grid cells."""
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"YOLOv2 computes in float32, bfloat16 or float16, got dtype {dtype}")
  anchors = jnp.asarray(anchors, jnp.float32)
  if anchors.ndim != 2 or anchors.shape[1] != 2 or not bool(jnp.all(anchors > 0)):
    raise ValueError(f"anchors must be positive (w, h) pairs in grid cells, got {anchors.tolist()}")
  module = YOLOv2(num_classes=num_classes, num_anchors=anchors.shape[0], width=width, output_stride=output_stride,
                  batch_norm=batch_norm, passthrough=passthrough, dtype=dtype)

  def assign(batch):
    _, h, w, _ = batch["image"].shape
    if h % output_stride or w % output_stride:
      raise ValueError(f"YOLOv2 at output stride {output_stride} needs image sides that are multiples of it, "
                       f"got {h}x{w}")
    grid = (h // output_stride, w // output_stride)
    targets_fn = lambda b, l, v, c: yolo_targets(  # noqa: E731
        b, l, v, c, grid_shapes=[grid], strides=[output_stride], anchors=[anchors * output_stride])
    return jax.vmap(targets_fn)(batch["boxes"], batch["labels"], batch["valid"], batch["crowd"])

  def loss(outputs, targets):
    raw = outputs["raw"]
    grid_shapes, strides, anchors_px = _geometry(raw, output_stride, anchors)
    return yolo_loss(raw.reshape(raw.shape[0], -1, raw.shape[-1]), targets, grid_shapes=grid_shapes,
                     strides=strides, anchors=anchors_px, images_seen=outputs["images_seen"],
                     coord_scale=coord_scale, object_scale=object_scale, noobject_scale=noobject_scale,
                     class_scale=class_scale, ignore_threshold=ignore_threshold, prior_images=prior_images)

  def postprocess(outputs, image_shape=None):
    return yolov2_decode(outputs, output_stride=output_stride, anchors=anchors, image_shape=image_shape,
                         score_threshold=score_threshold, iou_threshold=iou_threshold, max_detections=max_detections)

  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes)
