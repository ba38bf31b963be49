"""YOLO output layers: YOLOv1's fully connected grid predictor and the anchor-based 1x1 convolution of YOLOv2/v3.

Output layouts (the arrays every YOLO target, loss and decoding function in jaxdet reads):
- `YOLOv1Head` -> `{"boxes": [B, S, S, nb, 4], "confidence": [B, S, S, nb], "classes": [B, S, S, C]}`: per cell
  (row i, column j) `nb` boxes `(x, y, sqrt w, sqrt h)` -- the centre relative to the cell, the size relative to
  the image, what `encode_yolov1` writes -- their confidences, and one set of class probabilities. All linear, as
  in the paper (darknet `yolov1.cfg`: `softmax=0`, `sqrt=1`).
- `YOLOHead` -> `[B, H, W, A, 5 + C]`: per cell and anchor the raw `(tx, ty, tw, th, to)` and C class logits
  (darknet's region-layer entry order).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdet.models.layers import Conv


class YOLOv1Head(nn.Module):
  """Returns YOLOv1's predictions (layout above) from features `[B, S, S, C']`.

  Two forms, both ending in one linear fully connected layer of S x S x (5 nb + C) outputs:
  - the paper's (`local_filters=0`, `hidden` > 0): flatten, a fully connected layer of `hidden` units (4096 in the
    paper) with leaky ReLU 0.1 and dropout, then the output layer;
  - darknet's `yolov1.cfg` (`local_filters` > 0, `hidden=0`): a locally connected 3 x 3 layer (unshared weights per
    cell, 256 filters in the reference) with leaky ReLU 0.1, dropout, flatten, then the output layer. Every cell's
    outputs read the features of the whole map linearly, without the paper's `hidden`-unit bottleneck.
  `local_filters` and `hidden` can also be combined. The grid S is the feature map's side (7 x 7 at 448). Dropout
  draws from the `dropout` rng stream in training.

  `shared=True` is not YOLOv1's (a diagnosis, docs/benchmarks.md "YOLO"): the same two layers applied to each cell's
  features with weights shared by all cells (1 x 1 convolutions of `hidden` and `5 nb + C` channels), so every
  object trains one regressor instead of its cell's own. `sigmoid_xy=True` is not YOLOv1's either: YOLOv2's
  logistic (x, y), so the centre stays in its cell (what `boxes` holds, and so the loss and the decoding, is then
  sigma(t_x), sigma(t_y)); a diagnosis. Nor is `yolov2_scores=True` (a diagnosis): YOLOv2's scoring, the
  confidence a logistic sigma(t_o) and `classes` the softmax of `class_logits` (also returned, so that
  `yolov1_loss` trains them by softmax cross-entropy).
  """

  num_classes: int
  boxes_per_cell: int = 2
  hidden: int = 4096
  local_filters: int = 0
  dropout: float = 0.5
  shared: bool = False  # not YOLOv1's: one per-cell regressor shared by all cells, for a diagnosis
  sigmoid_xy: bool = False  # not YOLOv1's: YOLOv2's logistic centre, for a diagnosis
  yolov2_scores: bool = False  # not YOLOv1's: logistic confidence, softmax classes, for a diagnosis
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool) -> dict[str, jnp.ndarray]:
    b, s_h, s_w, _ = x.shape
    nb, c = self.boxes_per_cell, self.num_classes
    if self.local_filters:
      x = nn.ConvLocal(self.local_filters, (3, 3), padding="SAME", dtype=self.dtype, name="local")(x)
      x = nn.leaky_relu(x, 0.1)
    if self.shared:
      if self.hidden:
        x = nn.leaky_relu(Conv(self.hidden, (1, 1), dtype=self.dtype, name="fc1")(x), 0.1)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = Conv(5 * nb + c, (1, 1), dtype=self.dtype, name="fc2")(x).astype(jnp.float32)
    else:
      x = x.reshape(b, -1)
      if self.hidden:
        x = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x), 0.1)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
      x = nn.Dense(s_h * s_w * (5 * nb + c), dtype=self.dtype, name="fc2")(x).astype(jnp.float32)
      x = x.reshape(b, s_h, s_w, 5 * nb + c)
    per_box = x[..., :5 * nb].reshape(b, s_h, s_w, nb, 5)
    boxes = per_box[..., :4]
    if self.sigmoid_xy:
      boxes = jnp.concatenate([nn.sigmoid(boxes[..., :2]), boxes[..., 2:]], axis=-1)
    if self.yolov2_scores:
      logits = x[..., 5 * nb:]
      return {"boxes": boxes, "confidence": nn.sigmoid(per_box[..., 4]), "classes": nn.softmax(logits, axis=-1),
              "class_logits": logits}
    return {"boxes": boxes, "confidence": per_box[..., 4], "classes": x[..., 5 * nb:]}


class YOLOHead(nn.Module):
  """Returns `[B, H, W, A, 5 + C]` float32 raw predictions (layout above) from features `[B, H, W, C']`: one 1x1
  convolution with bias, `A (5 + C)` channels (YOLOv2's last layer; one per scale in YOLOv3)."""

  num_classes: int
  num_anchors: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x) -> jnp.ndarray:
    b, h, w, _ = x.shape
    x = Conv(self.num_anchors * (5 + self.num_classes), (1, 1), dtype=self.dtype, name="conv")(x)
    return x.astype(jnp.float32).reshape(b, h, w, self.num_anchors, 5 + self.num_classes)
