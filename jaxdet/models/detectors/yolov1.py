"""YOLOv1 (Redmon et al. 2016, "You Only Look Once"): one network regresses an S x S grid of boxes and classes.

Composition: YOLOv1's 24-convolution network (or Fast YOLO's) to an S x S map -> two fully connected layers that
predict, per cell, B boxes (x, y, sqrt w, sqrt h, confidence) and C class probabilities (`YOLOv1Head`). Targets
(`yolov1_targets`) put each object in the cell holding its centre; the loss (`yolov1_loss`) is the course's sum of
terms (1)-(5) (section E2, the paper's eq. 3); inference scores each box and class by P(class) x confidence,
thresholds and runs per-class NMS (`yolov1_decode`). The reference is darknet's `detection_layer.c` with
`yolov1.cfg` (rescore=1, sqrt=1, coord_scale 5, noobject_scale 0.5).

Rules the course leaves open, as decided here:
- One object per cell (the paper): when several centres fall in one cell, the one with the largest box area is
  kept (ties: the first listed) and the others get no target. Darknet keeps the first one listed; the list order
  of a data set is arbitrary, while the larger object is the one the cell's features describe best. On `shapes`
  at S = 8, 3.2% of the training objects lose their cell this way (11.5% at S = 4, 0.8% at S = 16).
- The responsible predictor of an object's cell is the one of the B whose box has the larger IoU with the truth;
  when every IoU is 0 (early in training) it is the one closest in (x, y, w, h) (darknet's `box_rmse` fallback),
  so that the B predictors still specialise instead of the first always winning.
- A centre exactly on a cell border belongs to the cell below / to the right (cells are half-open, as pixels).
- The loss is summed over cells, boxes and classes and averaged over images (darknet sums over the batch and
  divides the learning rate by the batch size).
- Outputs are linear, as in the paper; at inference confidence and class probabilities are clipped to [0, 1]
  before their product, so that two negative outputs never make a positive score.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.darknet import ConvBNLeaky, Darknet19, YOLOv1Backbone
from jaxdet.models.detector import Detections, Detector
from jaxdet.models.heads.yolo import YOLOv1Head
from jaxdet.models.necks.passthrough import Passthrough
from jaxdet.models.postprocess import select_detections
from jaxdet.ops.boxes import box_area, clip_boxes, is_valid_box, xyxy_to_cxcywh
from jaxdet.ops.coders import decode_yolov1, encode_yolov1
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from jaxdet.ops.iou import elementwise_iou
from jaxdet.ops.losses import softmax_cross_entropy


class YOLOv1(nn.Module):
  """Returns YOLOv1's predictions (`YOLOv1Head` layout) for images `[B, H, W, 3]`; the grid is S = H / output_stride.

  The fully connected head fixes the input size: the module only runs on the image shape it was initialised with.
  `hidden` / `local_filters` choose the paper's head or darknet `yolov1.cfg`'s (`YOLOv1Head`). Not YOLOv1's,
  diagnosis options that swap one of its parts with YOLOv2's: `passthrough` adds the passthrough of the stride
  `output_stride / 2` map, `backbone="darknet19"` replaces the 24-convolution network with Darknet-19 (`width` is
  then its first layer's channels, 32 in YOLOv2's paper), `detect_convs` adds that many 3 x 3 convolutions (as
  many channels as the network's last map) between the network (and passthrough) and the head, as YOLOv2's
  detection layers, `sigmoid_xy` makes the centre YOLOv2's logistic offset in its cell and `yolov2_scores` scores
  as YOLOv2 (a logistic confidence, softmax classes trained by cross-entropy; `YOLOv1Head`).
  """

  num_classes: int
  width: int = 64
  output_stride: int = 64
  fast: bool = False
  batch_norm: bool = True
  boxes_per_cell: int = 2
  hidden: int = 4096
  local_filters: int = 0
  backbone: str = "yolov1"  # "darknet19": not YOLOv1's, YOLOv2's network, for a diagnosis
  passthrough: bool = False  # not YOLOv1's: YOLOv2's fine-grained features, for a diagnosis
  detect_convs: int = 0  # not YOLOv1's: YOLOv2's 3 x 3 detection convolutions, for a diagnosis
  shared_head: bool = False  # not YOLOv1's: `YOLOv1Head(shared=True)`, for a diagnosis
  sigmoid_xy: bool = False  # not YOLOv1's: `YOLOv1Head(sigmoid_xy=True)`, for a diagnosis
  yolov2_scores: bool = False  # not YOLOv1's: `YOLOv1Head(yolov2_scores=True)`, for a diagnosis
  dropout: float = 0.5
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    if self.backbone == "darknet19":
      network = Darknet19(width=self.width, output_stride=self.output_stride, batch_norm=self.batch_norm,
                          dtype=self.dtype, name="backbone")
    else:
      network = YOLOv1Backbone(width=self.width, output_stride=self.output_stride, fast=self.fast,
                               batch_norm=self.batch_norm, dtype=self.dtype, name="backbone")
    features = network(x, train=train)
    x = features[self.output_stride]
    channels = x.shape[-1]
    if self.passthrough:
      x = Passthrough(2 * self.width, batch_norm=self.batch_norm, dtype=self.dtype, name="passthrough")(
          features[self.output_stride // 2], x, train=train)
    for k in range(self.detect_convs):
      x = ConvBNLeaky(channels, 3, batch_norm=self.batch_norm, dtype=self.dtype, name=f"detect{k + 1}")(x, train=train)
    return YOLOv1Head(self.num_classes, boxes_per_cell=self.boxes_per_cell, hidden=self.hidden,
                      local_filters=self.local_filters, dropout=self.dropout, shared=self.shared_head,
                      sigmoid_xy=self.sigmoid_xy, yolov2_scores=self.yolov2_scores, dtype=self.dtype,
                      name="head")(x, train=train)


def yolov1_targets(boxes: jax.Array, labels: jax.Array, valid: jax.Array, crowd: jax.Array, *,
                   grid_size: tuple[int, int], image_size: tuple[int, int]) -> dict[str, jax.Array]:
  """Returns one image's YOLOv1 targets per cell (vmap for a batch).

  Args:
    boxes: `[M, 4]` xyxy input pixels; labels: int `[M]`; valid, crowd: bool `[M]` (padded ground truth).
    grid_size: (S_h, S_w) cells; image_size: (H, W) pixels.

  Returns a dict of
    object `[S_h, S_w]` bool: the cell holds an object's centre (1_i^obj); crowd and degenerate boxes never do.
    box `[S_h, S_w, 4]` xyxy pixels of the cell's object (clipped to the image); zeros elsewhere.
    coords `[S_h, S_w, 4]`: `encode_yolov1` of that box, (x, y) in the cell and (sqrt w, sqrt h) of the image.
    label `[S_h, S_w]` int32: its class (0 where no object).
  The cell's object is the largest one whose centre it holds (ties: the first listed), see the module docstring.
  """
  gh, gw = grid_size
  ih, iw = image_size
  boxes = jnp.asarray(boxes, jnp.float32)
  finite = jnp.all(jnp.isfinite(boxes), axis=-1)
  boxes = jnp.where(finite[:, None], clip_boxes(boxes, height=ih, width=iw), 0.0)
  positive = jnp.asarray(valid, bool) & ~jnp.asarray(crowd, bool) & is_valid_box(boxes)
  cells, coords = encode_yolov1(boxes, grid_size=grid_size, image_size=image_size)
  flat = cells[:, 0] * gw + cells[:, 1]
  holds = positive[:, None] & (flat[:, None] == jnp.arange(gh * gw)[None, :])  # [M, S*S]
  owner = jnp.argmax(jnp.where(holds, box_area(boxes)[:, None], -1.0), axis=0)  # first of the largest
  has = jnp.any(holds, axis=0)
  pick = lambda x: jnp.where(has.reshape((-1,) + (1,) * (x.ndim - 1)), x[owner], 0)  # noqa: E731
  return {"object": has.reshape(gh, gw),
          "box": pick(boxes).reshape(gh, gw, 4),
          "coords": pick(coords).reshape(gh, gw, 4),
          "label": pick(jnp.asarray(labels, jnp.int32)).reshape(gh, gw)}


def _cells(grid_size: tuple[int, int]) -> jax.Array:
  """`[S_h, S_w, 1, 2]` (row, column) of every cell, broadcast over the boxes of a cell."""
  rows, cols = jnp.meshgrid(jnp.arange(grid_size[0]), jnp.arange(grid_size[1]), indexing="ij")
  return jnp.stack([rows, cols], axis=-1)[:, :, None, :]


def responsible_predictor(pred_boxes: jax.Array, truth: jax.Array, *, image_size: tuple[int, int]) -> jax.Array:
  """Returns int32 `[...]`: which of the B predicted boxes `[..., B, 4]` (xyxy pixels) is responsible for the truth
  `[..., 4]` of their cell -- the largest IoU (first on ties); if every IoU is 0, the smallest root-mean-square
  difference of (cx, cy, w, h) in image units (darknet's `box_rmse`)."""
  iou = elementwise_iou(pred_boxes, truth[..., None, :])
  scale = jnp.array([image_size[1], image_size[0]] * 2, jnp.float32)
  diff = (xyxy_to_cxcywh(pred_boxes) - xyxy_to_cxcywh(truth)[..., None, :]) / scale
  rmse = jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1))
  rmse = jnp.where(jnp.isfinite(rmse), rmse, jnp.inf)
  return jnp.where(jnp.any(iou > 0, axis=-1), jnp.argmax(iou, axis=-1), jnp.argmin(rmse, axis=-1)).astype(jnp.int32)


def yolov1_loss(outputs: dict[str, jax.Array], targets: dict[str, jax.Array], *, image_size: tuple[int, int],
                coord_weight: float = 5.0, noobj_weight: float = 0.5) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: the course's YOLOv1 loss, terms (1)-(5), summed over a batch's cells and averaged
  over its images.

    (1) coord_weight * sum 1_ij^obj [(x - x^)^2 + (y - y^)^2]
    (2) coord_weight * sum 1_ij^obj [(sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
    (3) sum 1_ij^obj (C - C^)^2, C^ = IoU(predicted box, truth) (no gradient through C^)
    (4) noobj_weight * sum 1_ij^noobj C^2, 1_ij^noobj = 1 - 1_ij^obj (also the other predictors of an object's cell)
    (5) sum_i 1_i^obj sum_c (p_i(c) - p^_i(c))^2, p^ one-hot

  1_ij^obj marks the responsible predictor j (`responsible_predictor`) of a cell i holding an object. `outputs` is
  `YOLOv1Head`'s; `targets` is `yolov1_targets`' batched; `image_size` (H, W) is the input's, in pixels. When
  `outputs` has `class_logits` (`YOLOv1Head(yolov2_scores=True)`, a diagnosis, not YOLOv1), term (5) is YOLOv2's
  softmax cross-entropy of those logits instead.
  """
  pred, conf, probs = outputs["boxes"], outputs["confidence"], outputs["classes"]
  b, gh, gw, nb, _ = pred.shape
  pred_xyxy = decode_yolov1(pred, _cells((gh, gw)), grid_size=(gh, gw), image_size=image_size)
  truth = targets["box"]
  best = responsible_predictor(jax.lax.stop_gradient(pred_xyxy), truth, image_size=image_size)
  obj_ij = targets["object"][..., None] & (jnp.arange(nb) == best[..., None])  # [B, S, S, nb]
  iou = jax.lax.stop_gradient(elementwise_iou(pred_xyxy, truth[..., None, :]))

  sq = jnp.square(pred - targets["coords"][..., None, :])  # [B, S, S, nb, 4]
  where = lambda mask, x: jnp.sum(jnp.where(mask, x, 0.0))  # noqa: E731
  xy = coord_weight * where(obj_ij, sq[..., 0] + sq[..., 1])
  wh = coord_weight * where(obj_ij, sq[..., 2] + sq[..., 3])
  obj = where(obj_ij, jnp.square(conf - iou))
  noobj = noobj_weight * where(~obj_ij, jnp.square(conf))
  onehot = jax.nn.one_hot(targets["label"], probs.shape[-1])
  if "class_logits" in outputs:
    cls = where(targets["object"], softmax_cross_entropy(outputs["class_logits"], targets["label"]))
  else:
    cls = where(targets["object"][..., None], jnp.square(probs - onehot))
  terms = {"xy_loss": xy, "wh_loss": wh, "obj_loss": obj, "noobj_loss": noobj, "class_loss": cls}
  terms = {k: v / b for k, v in terms.items()}
  loss = sum(terms.values())
  num_objects = jnp.sum(targets["object"])
  mean_iou = where(obj_ij, iou) / jnp.maximum(num_objects, 1)
  return loss, {"loss": loss, **terms, "num_objects": num_objects.astype(jnp.float32), "mean_iou": mean_iou}


def yolov1_decode(outputs: dict[str, jax.Array], *, image_size: tuple[int, int], score_threshold: float = 0.005,
                  iou_threshold: float = 0.5, max_detections: int = 100) -> Detections:
  """Returns `Detections`: every box of every cell scored per class by P(class) x confidence (both clipped to
  [0, 1]), kept above `score_threshold`, per-class NMS at `iou_threshold`, the best `max_detections`."""
  pred, conf, probs = outputs["boxes"], outputs["confidence"], outputs["classes"]
  b, gh, gw, nb, _ = pred.shape
  boxes = decode_yolov1(pred, _cells((gh, gw)), grid_size=(gh, gw), image_size=image_size)
  scores = jnp.clip(probs, 0.0, 1.0)[:, :, :, None, :] * jnp.clip(conf, 0.0, 1.0)[..., None]
  return select_detections(boxes.reshape(b, -1, 4), scores.reshape(b, gh * gw * nb, -1),
                           candidates_per_level=gh * gw * nb * probs.shape[-1], score_threshold=score_threshold,
                           iou_threshold=iou_threshold, max_detections=max_detections, image_shape=image_size)


def build_yolov1(*, num_classes: int, width: int = 64, output_stride: int = 64, fast: bool = False,
                 batch_norm: bool = True, boxes_per_cell: int = 2, hidden: int = 4096, local_filters: int = 0,
                 backbone: str = "yolov1", passthrough: bool = False, detect_convs: int = 0,
                 shared_head: bool = False, sigmoid_xy: bool = False, yolov2_scores: bool = False,
                 dropout: float = 0.5, coord_weight: float = 5.0, noobj_weight: float = 0.5,
                 score_threshold: float = 0.005, iou_threshold: float = 0.5, max_detections: int = 100,
                 dtype: Any = jnp.float32) -> Detector:
  """Returns the YOLOv1 `Detector` (see the module docstring); the grid is S = image side / `output_stride`."""
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"YOLOv1 computes in float32, bfloat16 or float16, got dtype {dtype}")
  if backbone not in ("yolov1", "darknet19"):
    raise ValueError(f"backbone must be 'yolov1' (with `fast` for Fast YOLO) or 'darknet19', got {backbone!r}")
  if backbone == "darknet19" and fast:
    raise ValueError("fast=True selects Fast YOLO's network; it does not combine with backbone='darknet19'")
  module = YOLOv1(num_classes=num_classes, width=width, output_stride=output_stride, fast=fast,
                  batch_norm=batch_norm, boxes_per_cell=boxes_per_cell, hidden=hidden, local_filters=local_filters,
                  backbone=backbone, passthrough=passthrough, detect_convs=detect_convs, shared_head=shared_head,
                  sigmoid_xy=sigmoid_xy, yolov2_scores=yolov2_scores, dropout=dropout, dtype=dtype)

  def assign(batch):
    _, h, w, _ = batch["image"].shape
    if h % output_stride or w % output_stride:
      raise ValueError(f"YOLOv1 at output stride {output_stride} needs image sides that are multiples of it, "
                       f"got {h}x{w}")
    targets_fn = lambda b, l, v, c: yolov1_targets(  # noqa: E731
        b, l, v, c, grid_size=(h // output_stride, w // output_stride), image_size=(h, w))
    return jax.vmap(targets_fn)(batch["boxes"], batch["labels"], batch["valid"], batch["crowd"])

  def loss(outputs, targets):
    gh, gw = outputs["boxes"].shape[1:3]
    return yolov1_loss(outputs, targets, image_size=(gh * output_stride, gw * output_stride),
                       coord_weight=coord_weight, noobj_weight=noobj_weight)

  def postprocess(outputs, image_shape=None):
    gh, gw = outputs["boxes"].shape[1:3]
    size = tuple(image_shape) if image_shape is not None else (gh * output_stride, gw * output_stride)
    return yolov1_decode(outputs, image_size=size, score_threshold=score_threshold, iou_threshold=iou_threshold,
                         max_detections=max_detections)

  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes)
