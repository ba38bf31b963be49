"""Targets, decoding and losses of anchor-based YOLO heads: YOLOv2's region layer and YOLOv3's yolo layer.

Predictions of every output scale are flattened and concatenated in (scale, row, column, anchor) order: N
predictors per image, each with raw `(tx, ty, tw, th, to)` and class logits (`YOLOHead`'s layout). Anchors are
given in input pixels per scale (YOLOv2's grid-unit priors times the stride).

Assignment (`yolo_targets`, outputs-independent, on device): each object goes to the one predictor whose anchor
has the best shape IoU with it (centres aligned; over the anchors of every scale, so in YOLOv3 the best anchor also
picks the scale) in the cell of that scale holding its centre (darknet `bias_match=1`). Two objects on one
predictor: the larger box wins (ties: the first listed) -- darknet lets the last one listed overwrite the others.
YOLOv4 (`anchor_iou_threshold`, darknet's `iou_thresh`) also makes every other anchor whose shape IoU with the
object exceeds the threshold responsible for it, in its own scale's cell. The ignore rule (`best_truth_iou`)
reads the predictions, so the loss applies it.

The YOLOv2 loss (`yolo_loss`), as darknet's `region_layer.c` with yolo-voc.cfg computes its gradients
(coord_scale 1, object_scale 5, noobject_scale 1, class_scale 1, thresh 0.6, rescore 1, softmax 1):
- responsible predictors: coord_scale (2 - w h) [(sigma(tx) - x^)^2 + (sigma(ty) - y^)^2 + (tw - tw^)^2 +
  (th - th^)^2] with w h the object's area as a fraction of the image; object_scale (sigma(to) - IoU)^2 with IoU
  between the decoded prediction and the truth (no gradient through it); class_scale x softmax cross-entropy;
- other predictors: noobject_scale sigma(to)^2, except where the best IoU of the decoded prediction with any truth
  exceeds `ignore_threshold` (0.6); and, for the first `prior_images` images seen (12,800 in darknet), 0.01
  [(sigma(tx) - 1/2)^2 + (sigma(ty) - 1/2)^2 + tw^2 + th^2], which pulls every box towards its anchor at the
  cell centre while the responsible ones are still rare.
Darknet writes gradients (deltas) rather than a loss; the squared terms carry a factor 1/2 here so that the loss's
gradient equals darknet's delta for every term, the softmax one (delta = one-hot - p on the logits) included.
The loss is summed over predictors and averaged over images (darknet divides its learning rate by the batch).

The YOLOv3 loss (`yolov3_loss`), as darknet's `yolo_layer.c` with yolov3.cfg computes its gradients (ignore_thresh
0.5, truth_thresh 1: off). The layer applies the logistic to x, y, objectness and classes in the forward pass but
passes its deltas (target - sigma) straight to the raw outputs, which makes them the gradients of binary
cross-entropies on the logits:
- responsible predictors: (2 - w h) [BCE(tx, x^) + BCE(ty, y^) + ((tw - tw^)^2 + (th - th^)^2) / 2]; objectness
  BCE(to, 1) (target 1, not the IoU as in YOLOv2); every class c: BCE(class logit c, [c = label]) -- independent
  logistic classifiers instead of the softmax (multi-label data could set several);
- other predictors: BCE(to, 0), except where the best IoU of the decoded prediction with any truth exceeds
  `ignore_threshold` (0.5), over the predictions of every scale. No prior term.
Scale factors (`coord_scale`, `object_scale`, `noobject_scale`, `class_scale`, all 1 in darknet) weight the terms.
The x, y terms are cross-entropies against soft targets, so they bottom out at the targets' entropy, not at 0.

YOLOv4's options of `yolov3_loss`: the grid-sensitivity scale s of the decoded centre (s sigma(t) - (s - 1) / 2,
`decode_yolo_boxes`; the x, y targets follow, `offset_targets`), the CIoU box loss in place of the x, y, w, h
terms, and label smoothing of the class targets.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdet.ops.boxes import box_area, clip_boxes, is_valid_box, xyxy_to_cxcywh
from jaxdet.ops.coders import decode_yolo
from jaxdet.ops.iou import elementwise_iou, pairwise_iou
from jaxdet.ops.kmeans import wh_iou
from jaxdet.ops.losses import ciou_loss, sigmoid_binary_cross_entropy, softmax_cross_entropy


def _shape_list(grid_shapes: Sequence[tuple[int, int]], anchors: Sequence[jax.Array]) -> list[int]:
  return [h * w * a.shape[0] for (h, w), a in zip(grid_shapes, anchors, strict=True)]


def yolo_targets(boxes: jax.Array, labels: jax.Array, valid: jax.Array, crowd: jax.Array, *,
                 grid_shapes: Sequence[tuple[int, int]], strides: Sequence[int],
                 anchors: Sequence[jax.Array], anchor_iou_threshold: float | None = None) -> dict[str, jax.Array]:
  """Returns one image's anchor-based YOLO targets (vmap for a batch).

  Args:
    boxes: `[M, 4]` xyxy input pixels; labels: int `[M]`; valid, crowd: bool `[M]` (padded ground truth).
    grid_shapes: (h, w) of each output scale; strides: its pixels per cell (the image is h * stride high).
    anchors: per scale, `[A_s, 2]` anchor (w, h) in input pixels.
    anchor_iou_threshold: None (YOLOv2/v3): each object goes to its best anchor only. A number (YOLOv4, darknet's
      `iou_thresh`, 0.213 in yolov4.cfg): also to every other anchor, of any scale, whose shape IoU with the object
      is strictly above it, each in the cell of its scale holding the centre. Several objects on one predictor:
      the larger box keeps it (ties: the first listed), as for the best anchors.

  Returns a dict of (N = sum over scales of h w A_s, in the order of the module docstring)
    positive `[N]` bool: the predictor is responsible for an object (1^obj).
    box `[N, 4]` xyxy pixels of its object; offset `[N, 2]` the centre in its cell, in [0, 1];
    log_wh `[N, 2]` (log(w / anchor w), log(h / anchor h)) for the predictor's anchor; label `[N]` int32; area
    `[N]` the object's area as a fraction of the image's (the (2 - w h) scale's w h). Zeros where not positive.
    truth `[M, 4]` the clipped boxes and truth_valid `[M]` the non-degenerate valid ones, crowd included: the
    "any truth" of the ignore rule.
  """
  height, width = grid_shapes[0][0] * strides[0], grid_shapes[0][1] * strides[0]
  boxes = jnp.asarray(boxes, jnp.float32)
  finite = jnp.all(jnp.isfinite(boxes), axis=-1)
  boxes = jnp.where(finite[:, None], clip_boxes(boxes, height=height, width=width), 0.0)
  truth_valid = jnp.asarray(valid, bool) & is_valid_box(boxes)
  positive = truth_valid & ~jnp.asarray(crowd, bool)
  cxcywh = xyxy_to_cxcywh(jnp.where(positive[:, None], boxes, jnp.array([0.0, 0.0, 1.0, 1.0])))

  # One (object m, anchor k) pair per object and anchor of every scale: the pair is assigned when k is the
  # object's best anchor (first of the best) or, with a threshold, when their shape IoU exceeds it.
  all_anchors = jnp.concatenate([jnp.asarray(a, jnp.float32) for a in anchors], axis=0)  # [K, 2]
  shape_iou = wh_iou(cxcywh[:, 2:], all_anchors)  # [M, K]
  k_all = all_anchors.shape[0]
  assigned = jnp.arange(k_all)[None, :] == jnp.argmax(shape_iou, axis=1)[:, None]
  if anchor_iou_threshold is not None:
    assigned |= shape_iou > anchor_iou_threshold
  assigned &= positive[:, None]
  index, offset = [], []
  first_pred = 0
  for (h, w), stride, a in zip(grid_shapes, strides, anchors, strict=True):
    grid = cxcywh[:, :2] / stride
    col = jnp.clip(jnp.floor(grid[:, 0]), 0, w - 1)
    row = jnp.clip(jnp.floor(grid[:, 1]), 0, h - 1)
    cell = first_pred + ((row * w + col) * a.shape[0]).astype(jnp.int32)  # [M]
    index.append(cell[:, None] + jnp.arange(a.shape[0], dtype=jnp.int32)[None, :])  # [M, A_s]
    in_cell = grid - jnp.stack([col, row], axis=-1)
    offset.append(jnp.broadcast_to(in_cell[:, None, :], (boxes.shape[0], a.shape[0], 2)))
    first_pred += h * w * a.shape[0]
  n = first_pred
  index = jnp.concatenate(index, axis=1).reshape(-1)  # [M K], object-major
  offset = jnp.concatenate(offset, axis=1).reshape(-1, 2)
  log_wh = jnp.log(cxcywh[:, None, 2:] / jnp.maximum(all_anchors[None], 1e-6)).reshape(-1, 2)
  pair_object = jnp.repeat(jnp.arange(boxes.shape[0]), k_all)
  pair_area = jnp.where(assigned.reshape(-1), box_area(boxes)[pair_object], -1.0)

  holds = assigned.reshape(-1)[:, None] & (index[:, None] == jnp.arange(n)[None, :])  # [M K, N]
  owner = jnp.argmax(jnp.where(holds, pair_area[:, None], -1.0), axis=0)  # first of the largest: lower m on ties
  has = jnp.any(holds, axis=0)

  def pick(x):
    return jnp.where(has.reshape((-1,) + (1,) * (x.ndim - 1)), x[owner], 0)

  per_object = lambda x: x[pair_object]  # noqa: E731
  return {"positive": has, "box": pick(per_object(boxes)), "offset": pick(offset), "log_wh": pick(log_wh),
          "label": pick(per_object(jnp.asarray(labels, jnp.int32))),
          "area": pick(per_object(box_area(boxes) / (height * width))), "truth": boxes, "truth_valid": truth_valid}


def yolo_cells(grid_shapes: Sequence[tuple[int, int]], anchors: Sequence[jax.Array]) -> jax.Array:
  """Returns int32 `[N, 2]` (row, column) of every predictor, scales concatenated (module docstring order)."""
  cells = []
  for (h, w), a in zip(grid_shapes, anchors, strict=True):
    rows, cols = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    rc = jnp.stack([rows, cols], axis=-1)[:, :, None, :]
    cells.append(jnp.broadcast_to(rc, (h, w, a.shape[0], 2)).reshape(-1, 2))
  return jnp.concatenate(cells).astype(jnp.int32)


def _per_scale(values: float | Sequence[float], num_scales: int, name: str) -> tuple[float, ...]:
  values = tuple(float(v) for v in values) if isinstance(values, (tuple, list)) else (float(values),) * num_scales
  if len(values) != num_scales:
    raise ValueError(f"{name} needs one value or one per scale ({num_scales}), got {values}")
  return values


def decode_yolo_boxes(raw: jax.Array, *, grid_shapes: Sequence[tuple[int, int]], strides: Sequence[int],
                      anchors: Sequence[jax.Array], xy_scale: float | Sequence[float] = 1.0) -> jax.Array:
  """Returns `[..., N, 4]` xyxy input pixels of raw predictions `[..., N, >= 4]`: centre (s sigma(t) - (s - 1) / 2
  + cell) x stride, size anchor x exp(t) (`decode_yolo` at each scale; t_w, t_h clamped at log(1000 / 16)).

  `xy_scale`: YOLOv4's grid sensitivity s, one value or one per scale (darknet yolov4.cfg: 1.2, 1.1, 1.05 from
  stride 8 to 32); 1 is YOLOv2/v3's decoding.
  """
  cells = yolo_cells(grid_shapes, anchors)
  sizes = _shape_list(grid_shapes, anchors)
  anchor_wh = jnp.concatenate([jnp.broadcast_to(jnp.asarray(a, jnp.float32), (h * w, *a.shape)).reshape(-1, 2)
                               for (h, w), a in zip(grid_shapes, anchors, strict=True)])
  stride = jnp.concatenate([jnp.full((n,), s, jnp.float32) for n, s in zip(sizes, strides, strict=True)])
  scales = _per_scale(xy_scale, len(sizes), "xy_scale")
  if all(v == 1.0 for v in scales):
    return decode_yolo(raw[..., :4], anchor_wh, cells, stride=stride)
  scale = jnp.concatenate([jnp.full((n,), v, jnp.float32) for n, v in zip(sizes, scales, strict=True)])
  return decode_yolo(raw[..., :4], anchor_wh, cells, stride=stride, xy_scale=scale)


def offset_targets(offset: jax.Array, xy_scale: jax.Array | float) -> jax.Array:
  """Returns `[..., 2]` the targets of sigma(t_x), sigma(t_y) for centre offsets `[..., 2]` in [0, 1] of the cell
  under grid sensitivity s (`xy_scale`, broadcastable): the solution of s sigma - (s - 1) / 2 = offset,
  (offset + (s - 1) / 2) / s, in [(s - 1) / 2s, (s + 1) / 2s]; the offset itself at s = 1."""
  s = jnp.asarray(xy_scale, jnp.float32)
  return (offset + (s - 1) / 2) / s


def best_truth_iou(pred_boxes: jax.Array, truth: jax.Array, truth_valid: jax.Array) -> jax.Array:
  """Returns `[..., N]`: each predicted box's best IoU with any valid truth (0 with none) -- the ignore rule's input.

  pred_boxes `[..., N, 4]`, truth `[..., M, 4]` xyxy pixels, truth_valid bool `[..., M]`.
  """
  iou = pairwise_iou(pred_boxes, truth)
  return jnp.max(jnp.where(truth_valid[..., None, :], iou, 0.0), axis=-1, initial=0.0)


def yolo_loss(raw: jax.Array, targets: dict[str, jax.Array], *, grid_shapes: Sequence[tuple[int, int]],
              strides: Sequence[int], anchors: Sequence[jax.Array], images_seen: jax.Array | int = 0,
              coord_scale: float = 1.0, object_scale: float = 5.0, noobject_scale: float = 1.0,
              class_scale: float = 1.0, ignore_threshold: float = 0.6, prior_images: int = 12800,
              prior_scale: float = 0.01) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: the YOLOv2 loss of the module docstring over a batch.

  Args:
    raw: `[B, N, 5 + C]` predictions, scales flattened and concatenated (module docstring).
    targets: `yolo_targets`' output, batched.
    grid_shapes, strides, anchors: as for `yolo_targets`.
    images_seen: images trained on before this batch; the prior term applies while it is below `prior_images`
      (0 turns the term off).
  """
  b = raw.shape[0]
  sig_xy = jax.nn.sigmoid(raw[..., 0:2])
  t_wh = raw[..., 2:4]
  objectness = jax.nn.sigmoid(raw[..., 4])
  pred_boxes = jax.lax.stop_gradient(decode_yolo_boxes(raw, grid_shapes=grid_shapes, strides=strides,
                                                       anchors=anchors))
  pos = targets["positive"]
  iou = jax.lax.stop_gradient(elementwise_iou(pred_boxes, targets["box"]))
  best = jax.lax.stop_gradient(best_truth_iou(pred_boxes, targets["truth"], targets["truth_valid"]))

  where = lambda mask, x: jnp.sum(jnp.where(mask, x, 0.0))  # noqa: E731
  coord_err = (jnp.sum(jnp.square(sig_xy - targets["offset"]), -1) + jnp.sum(jnp.square(t_wh - targets["log_wh"]), -1))
  coord = 0.5 * coord_scale * where(pos, (2.0 - targets["area"]) * coord_err)
  obj = 0.5 * object_scale * where(pos, jnp.square(objectness - iou))
  ignored = ~pos & (best > ignore_threshold)
  noobj = 0.5 * noobject_scale * where(~pos & ~ignored, jnp.square(objectness))
  cls = class_scale * where(pos, softmax_cross_entropy(raw[..., 5:], targets["label"]))
  prior_err = jnp.sum(jnp.square(sig_xy - 0.5), -1) + jnp.sum(jnp.square(t_wh), -1)
  prior_on = jnp.asarray(images_seen) < prior_images
  prior = jnp.where(prior_on, 0.5 * prior_scale * where(~pos, prior_err), 0.0)

  terms = {"coord_loss": coord, "obj_loss": obj, "noobj_loss": noobj, "class_loss": cls, "prior_loss": prior}
  terms = {k: v / b for k, v in terms.items()}
  loss = sum(terms.values())
  num_pos = jnp.sum(pos)
  return loss, {"loss": loss, **terms, "num_objects": num_pos.astype(jnp.float32),
                "mean_iou": where(pos, iou) / jnp.maximum(num_pos, 1),
                "ignored_fraction": jnp.mean(ignored.astype(jnp.float32))}


BOX_LOSSES = ("yolov3", "ciou")


def yolov3_loss(raw: jax.Array, targets: dict[str, jax.Array], *, grid_shapes: Sequence[tuple[int, int]],
                strides: Sequence[int], anchors: Sequence[jax.Array], coord_scale: float = 1.0,
                object_scale: float = 1.0, noobject_scale: float = 1.0, class_scale: float = 1.0,
                ignore_threshold: float = 0.5, box_loss: str = "yolov3", xy_scale: float | Sequence[float] = 1.0,
                label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: the YOLOv3 loss of the module docstring over a batch, summed over predictors and
  averaged over images; YOLOv4's options change three of its terms.

  Args:
    raw: `[B, N, 5 + C]` predictions of every scale, flattened and concatenated (module docstring).
    targets: `yolo_targets`' output for the same scales, batched.
    grid_shapes, strides, anchors: as for `yolo_targets`.
    box_loss: "yolov3" (BCE on x, y, squared error on the log sizes, weighted (2 - w h)) or "ciou" (YOLOv4:
      coord_scale x (1 - CIoU) between the decoded prediction and its object, `jaxdet.ops.ciou_loss`; darknet's
      `iou_loss=ciou` has no (2 - w h) weight either). The metric is `box_loss` for "ciou", `xy_loss` + `wh_loss`
      for "yolov3".
    xy_scale: YOLOv4's grid sensitivity s (one value or one per scale, `decode_yolo_boxes`); the x, y BCE targets
      become `offset_targets`, so the decoded centre still lands on the object's.
    label_smoothing: eps; the class BCE targets become (1 - eps) one_hot + eps / C (Szegedy et al. 2016 for C
      classes; darknet's yolo layer writes 1 - eps for the labelled class and eps / C for the others).
  """
  if box_loss not in BOX_LOSSES:
    raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  b, _, depth = raw.shape
  decoded = decode_yolo_boxes(raw, grid_shapes=grid_shapes, strides=strides, anchors=anchors, xy_scale=xy_scale)
  pred_boxes = jax.lax.stop_gradient(decoded)
  pos = targets["positive"]
  best = jax.lax.stop_gradient(best_truth_iou(pred_boxes, targets["truth"], targets["truth_valid"]))
  ignored = ~pos & (best > ignore_threshold)

  where = lambda mask, x: jnp.sum(jnp.where(mask, x, 0.0))  # noqa: E731
  if box_loss == "ciou":
    box_terms = {"box_loss": coord_scale * where(pos, ciou_loss(decoded, targets["box"]))}
  else:
    sizes = _shape_list(grid_shapes, anchors)
    scale_xy = jnp.concatenate([jnp.full((n,), v, jnp.float32)
                                for n, v in zip(sizes, _per_scale(xy_scale, len(sizes), "xy_scale"), strict=True)])
    xy_target = offset_targets(targets["offset"], scale_xy[:, None])
    scale = coord_scale * (2.0 - targets["area"])
    box_terms = {"xy_loss": where(pos, scale * jnp.sum(sigmoid_binary_cross_entropy(raw[..., 0:2], xy_target), -1)),
                 "wh_loss": where(pos, scale * 0.5 * jnp.sum(jnp.square(raw[..., 2:4] - targets["log_wh"]), -1))}
  obj = object_scale * where(pos, sigmoid_binary_cross_entropy(raw[..., 4], 1.0))
  noobj = noobject_scale * where(~pos & ~ignored, sigmoid_binary_cross_entropy(raw[..., 4], 0.0))
  num_classes = depth - 5
  class_target = jax.nn.one_hot(targets["label"], num_classes, dtype=jnp.float32)
  class_target = class_target * (1.0 - label_smoothing) + label_smoothing / num_classes
  cls = class_scale * where(pos, jnp.sum(sigmoid_binary_cross_entropy(raw[..., 5:], class_target), -1))

  terms = {**box_terms, "obj_loss": obj, "noobj_loss": noobj, "class_loss": cls}
  terms = {k: v / b for k, v in terms.items()}
  loss = sum(terms.values())
  num_pos = jnp.sum(pos)
  iou = elementwise_iou(pred_boxes, targets["box"])
  return loss, {"loss": loss, **terms, "num_objects": num_pos.astype(jnp.float32),
                "mean_iou": where(pos, iou) / jnp.maximum(num_pos, 1),
                "ignored_fraction": jnp.mean(ignored.astype(jnp.float32))}
