"""R-CNN (Girshick et al., CVPR 2014; course A2-A3): every proposal warped and run through a CNN on its own.

Test time, per image: each of its proposals (selective search, the detector's `inputs`) is enlarged by context
padding, warped (anisotropically, bilinear) to a fixed square and run through the CNN; the CNN's features are
scored by one linear SVM per class ("svm", the paper) or by the fine-tuned network's own softmax ("softmax", the
course's "why SVM?" comparison), class-specific linear bounding-box regressors move each proposal, and greedy
per-class NMS (0.3 in the paper) keeps the best. Training is the paper's multi-stage pipeline
(`experiments/rcnn.py`): fine-tune the CNN as a (C + 1)-way classifier on warped regions -> cache features ->
SVMs with hard negative mining (`heads/linear_svm.py`) -> ridge bounding-box regression (`heads/bbox_ridge.py`);
the pipeline writes the parameters of this module into a checkpoint that eval.py / predict.py read as any other.

Warping (appendix A): the paper warps to 227 x 227 with p = 16 pixels of (warped) context around the box: the box
is enlarged about its centre by 227 / (227 - 2 p) on each axis before warping, and pixels outside the image are the
image mean (here: zeros after normalisation, which RoI Align's sampling gives outside the map). `warp_size` and
`context` scale both (the shapes config: 32 and 2, the same 7% border). The warp is `roi_align` on the image with
one bilinear sample at each output pixel's centre. Features: `pool5` (the CNN's globally pooled last stage, used
by the box regressors as in the paper) and `fc7` (used by the SVMs).

SVM scores are margins; `postprocess` reports sigmoid(margin) as the score in [0, 1], which keeps each class's
ranking (the COCO / VOC AP depends only on it).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.resnet import ResNet
from jaxdet.models.detector import Detections, Detector
from jaxdet.models.detectors.fast_rcnn import proposal_scores
from jaxdet.models.postprocess import select_detections
from jaxdet.ops.coders import decode_boxes
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from jaxdet.ops.roi_align import roi_align

SCORERS = ("svm", "softmax")


def context_boxes(boxes: jax.Array, *, warp_size: int, context: int) -> jax.Array:
  """Returns `[..., 4]` boxes enlarged about their centres by `warp_size / (warp_size - 2 context)` on each axis:
  warped to `warp_size`, the original box then has `context` pixels of surrounding image on every side."""
  if not 0 <= 2 * context < warp_size:
    raise ValueError(f"context padding {context} must leave part of a {warp_size}-pixel warp for the box")
  factor = warp_size / (warp_size - 2 * context)
  c = 0.5 * (boxes[..., :2] + boxes[..., 2:])
  half = 0.5 * (boxes[..., 2:] - boxes[..., :2]) * factor
  return jnp.concatenate([c - half, c + half], axis=-1)


def warp_regions(images: jax.Array, boxes: jax.Array, box_indices: jax.Array, *, warp_size: int,
                 context: int) -> jax.Array:
  """Returns `[R, S, S, C]` regions of `images [B, H, W, C]` (normalised) warped to S = `warp_size` with context.

  `boxes [R, 4]` xyxy pixels, `box_indices int [R]` (their image; -1 gives zeros). Output pixel (i, j) is the
  bilinear sample of the enlarged box at the centre of its (i, j)-th cell; samples beyond the image are 0.
  """
  return roi_align(images, context_boxes(boxes, warp_size=warp_size, context=context), box_indices,
                   output_size=warp_size, spatial_scale=1.0, sampling_ratio=1, aligned=True)


class RCNNNet(nn.Module):
  """Returns `{"pool5": [R, D], "fc7": [R, F], "logits": [R, C + 1]}` for warped regions `[R, S, S, 3]`.

  The CNN: ResNet-`depth` (all four stages, `width`), global average pooling ("pool5"), fc6 and fc7 with ReLU
  (and dropout in training, as AlexNet's), then the (C + 1)-way classifier used for fine-tuning.
  """

  num_classes: int
  depth: int = 18
  width: int = 16
  fc_features: int = 256
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, regions: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    x = ResNet(depth=self.depth, width=self.width, num_stages=4, dtype=self.dtype, name="backbone")(
        regions.astype(self.dtype), train=train)[-1]
    pool5 = jnp.mean(x, axis=(1, 2))
    x = pool5
    for name in ("fc6", "fc7"):
      x = nn.relu(nn.Dense(self.fc_features, dtype=self.dtype, name=name)(x))
      fc = x
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                      name="cls")(x)
    return {"pool5": pool5.astype(jnp.float32), "fc7": fc.astype(jnp.float32), "logits": logits.astype(jnp.float32)}


class RCNN(nn.Module):
  """Returns, for images `[B, H, W, 3]` and proposals `[B, P, 4]` / `[B, P]`: `rois`, `roi_valid`,
  `roi_scores [B, P, C]` (sigmoid of the SVM margins, or the softmax's class probabilities), `roi_deltas
  [B, P, C, 4]` (the ridge regressors' (dx, dy, dw, dh), weights 1), and `proposals`, `proposal_valid`,
  `proposal_scores` (the given ranking).

  Parameters: `cnn` (`RCNNNet`), `svm` (`kernel [F, C]`, `bias [C]`: one linear SVM per class on fc7) and
  `bbox_reg` (`kernel [D, 4 C]`, `bias [4 C]` on pool5), both filled in by the training pipeline. Regions run
  through the CNN `chunk` at a time (`lax.map`), which bounds memory for any number of proposals.
  """

  num_classes: int
  depth: int = 18
  width: int = 16
  fc_features: int = 256
  warp_size: int = 32
  context: int = 2
  scorer: str = "svm"
  chunk: int = 512
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  def setup(self):
    self.cnn = RCNNNet(self.num_classes, depth=self.depth, width=self.width, fc_features=self.fc_features,
                       dtype=self.dtype)
    self.svm = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="svm")
    self.bbox_reg = nn.Dense(4 * self.num_classes, kernel_init=nn.initializers.zeros, name="bbox_reg")

  def regions(self, images: jax.Array, boxes: jax.Array, box_indices: jax.Array) -> jax.Array:
    """Returns `[R, S, S, 3]` normalised warped regions of uint8 `images` (see `warp_regions`)."""
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    return warp_regions(x, boxes, box_indices, warp_size=self.warp_size, context=self.context)

  def features(self, images: jax.Array, boxes: jax.Array, box_indices: jax.Array, *,
               train: bool = False) -> dict[str, jax.Array]:
    """Returns `RCNNNet`'s outputs for the regions `boxes [R, 4]` of `images` (uint8) — the fine-tuning and
    feature-caching entry point of the training pipeline."""
    return self.cnn(self.regions(images, boxes, box_indices), train=train)

  def __call__(self, images, *, train: bool = False, targets: Any = None, proposals=None, proposal_valid=None):
    del targets
    if train:
      raise ValueError("R-CNN is trained stage by stage by experiments/rcnn.py, not by one training forward pass")
    if proposals is None or proposal_valid is None:
      raise ValueError("R-CNN reads external proposals: call it with proposals [B, P, 4] and proposal_valid [B, P]")
    if self.scorer not in SCORERS:
      raise ValueError(f"scorer must be one of {SCORERS}, got {self.scorer!r}")
    b, p, _ = proposals.shape
    valid = jnp.asarray(proposal_valid, bool)
    index = jnp.where(valid, jnp.arange(b, dtype=jnp.int32)[:, None], -1).reshape(-1)
    boxes = jnp.asarray(proposals, jnp.float32).reshape(-1, 4)
    n = b * p
    chunks = -(-n // self.chunk)
    pad = chunks * self.chunk - n
    boxes = jnp.pad(boxes, ((0, pad), (0, 0))).reshape(chunks, self.chunk, 4)
    index = jnp.pad(index, (0, pad), constant_values=-1).reshape(chunks, self.chunk)
    if self.is_initializing():  # create every parameter once
      out = self.chunk_outputs(images, boxes[0], index[0])
      out = jax.tree.map(lambda x: jnp.zeros((chunks, *x.shape), x.dtype), out)
    else:  # an unbound copy applied functionally: Flax's bound modules cannot run inside a JAX loop
      variables = self.variables
      unbound = self.clone(parent=None)
      out = jax.lax.map(lambda a: unbound.apply(variables, images, a[0], a[1], method=RCNN.chunk_outputs),
                        (boxes, index))
    scores = out["scores"].reshape(-1, self.num_classes)[:n].reshape(b, p, self.num_classes)
    deltas = out["deltas"].reshape(-1, self.num_classes, 4)[:n].reshape(b, p, self.num_classes, 4)
    return {"rois": proposals, "roi_valid": valid, "roi_scores": jnp.where(valid[..., None], scores, 0.0),
            "roi_deltas": deltas, "proposals": proposals, "proposal_valid": valid,
            "proposal_scores": proposal_scores(valid)}

  def chunk_outputs(self, images: jax.Array, boxes: jax.Array, box_indices: jax.Array) -> dict[str, jax.Array]:
    """Returns `scores [R, C]` and `deltas [R, C, 4]` of the regions `boxes [R, 4]` of `images` (inference)."""
    feats = self.features(images, boxes, box_indices)
    svm = self.svm(feats["fc7"])
    softmax = jax.nn.softmax(feats["logits"], axis=-1)[:, 1:]
    scores = jax.nn.sigmoid(svm) if self.scorer == "svm" else softmax
    deltas = self.bbox_reg(feats["pool5"]).reshape(-1, self.num_classes, 4)
    return {"scores": scores, "deltas": deltas}


def build_rcnn(*, num_classes: int, num_proposals: int = 2000, score_threshold: float = 0.05,
               nms_threshold: float = 0.3, max_detections: int = 100, **options: Any) -> Detector:
  """Returns the R-CNN `Detector` (inference only: `loss` raises; train with `experiments/rcnn.py`).

  `options` are `RCNN`'s attributes (warp_size, context, scorer, ...); `num_proposals` is P per image. Detections:
  every proposal's box moved by each class's regressor, that class's score, score > `score_threshold`, greedy
  per-class NMS at `nms_threshold`, the best `max_detections`.
  """
  if "dtype" in options:
    options["dtype"] = jnp.dtype(options["dtype"])
  module = RCNN(num_classes=num_classes, **options)

  def assign(batch):
    return {k: batch[k] for k in ("boxes", "labels", "valid", "crowd")}

  def loss(outputs, targets):
    raise ValueError("R-CNN has no single training loss: train it with experiments/rcnn.py (multi-stage)")

  def postprocess(outputs, image_shape=None) -> Detections:
    boxes = decode_boxes(outputs["roi_deltas"], outputs["rois"][..., None, :])
    r, c = outputs["roi_scores"].shape[1:]
    return select_detections(boxes, outputs["roi_scores"], candidates_per_level=r * c,
                             score_threshold=score_threshold, iou_threshold=nms_threshold,
                             max_detections=max_detections, image_shape=image_shape)

  inputs = {"proposals": jax.ShapeDtypeStruct((num_proposals, 4), jnp.float32),
            "proposal_valid": jax.ShapeDtypeStruct((num_proposals,), jnp.bool_)}
  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes,
                  inputs=inputs)
