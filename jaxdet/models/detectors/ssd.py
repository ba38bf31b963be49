"""SSD (Liu et al. 2016, "SSD: Single Shot MultiBox Detector"): class scores and box offsets for a fixed set of
prior boxes on several feature maps, trained with the MultiBox loss and hard negative mining.

Composition: VGG-16 (`backbones/vgg.py`) -> SSD's body (`necks/ssd.py`: L2-normalised conv4_3, pool5, dilated fc6,
fc7, extra layers) -> one 3x3 class and one 3x3 box convolution per map (`heads/ssd.py`). Priors come from
`jaxdet.ops.ssd_priors` (scales s_min .. s_max spread linearly over the maps, the extra square of side
sqrt(s_k s_{k+1}), and the ratios of each map with their reciprocals). Targets (`assign`): SSD's matching
(`jaxdet.ops.match_ssd`: each ground truth's best prior, then every prior with IoU >= 0.5) and offsets encoded
with variances (0.1, 0.2), which is `encode_boxes` with weights (10, 10, 5, 5): SSD's g_cx = (c_x - d_cx) /
(0.1 d_w) is the Faster R-CNN dx times 1 / 0.1, and g_w = log(w / d_w) / 0.2 is dw times 1 / 0.2. Loss (`ssd_loss`):
softmax cross-entropy over the positives and the hardest negatives (3 per positive, per image) plus alpha times
smooth L1 over the positives, divided by the number of positives N (0 when N = 0). Inference (`ssd_decode`):
softmax, per class the 200 best priors scoring above 0.01, class-aware NMS at 0.45, the best 100 per image (the
paper keeps 200; COCO's AP reads at most 100 per image, so 100 gives the same numbers).

Deliberate differences from the paper, each said where it is made: the layout is scaled to 128 x 128 images (five
maps 16, 8, 4, 2, 1; `necks/ssd.py`), batch norm for training from scratch, and for the `shapes` set s_min = 0.1
(the config's; the paper's 0.2 leaves every object under 16 px without a prior of IoU >= 0.5).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.backbones.vgg import VGG
from jaxdet.models.detector import Detections, Detector
from jaxdet.models.heads.ssd import SSDHead
from jaxdet.models.necks.ssd import EXTRAS_128, SSDNeck, ssd_feature_sizes
from jaxdet.models.postprocess import select_detections
from jaxdet.ops.anchors import ssd_priors
from jaxdet.ops.coders import decode_boxes, encode_boxes
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from jaxdet.ops.losses import smooth_l1_loss, softmax_cross_entropy
from jaxdet.ops.matching import FOREGROUND, match_ssd
from jaxdet.ops.sampling import hard_negative_mining

BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # SSD's variances (0.1, 0.1, 0.2, 0.2) as encode_boxes weights
RATIOS_128 = ((2,), (2, 3), (2, 3), (2,), (2,))  # SSD300's pattern (4, 6, 6, ..., 4, 4 priors per cell), 5 maps


def priors_per_cell(aspect_ratios: Sequence[Sequence[float]]) -> tuple[int, ...]:
  """Returns the priors per cell of each map: two squares plus each ratio and its reciprocal."""
  return tuple(2 + 2 * len(r) for r in aspect_ratios)


@functools.lru_cache(maxsize=16)
def ssd_prior_boxes(image_size: int, *, extras: tuple[tuple[int, ...], ...],
                    aspect_ratios: tuple[tuple[float, ...], ...], s_min: float, s_max: float) -> np.ndarray:
  """Returns float32 `[P, 4]` xyxy pixel priors of a square `image_size` input (NumPy: a constant under jit)."""
  sizes = ssd_feature_sizes(image_size, extras=extras)
  if len(sizes) != len(aspect_ratios):
    raise ValueError(f"{len(sizes)} source maps ({sizes}) but {len(aspect_ratios)} aspect-ratio sets")
  with jax.ensure_compile_time_eval():  # called while tracing: the generator's NumPy result stays a constant
    priors = np.asarray(ssd_priors(sizes, aspect_ratios=aspect_ratios, s_min=s_min, s_max=s_max), np.float64)
  return (priors * image_size).astype(np.float32)


class SSD(nn.Module):
  """Returns `{"logits": [B, P, num_classes + 1], "deltas": [B, P, 4]}` (`SSDHead`) for images `[B, S, S, 3]`.

  Images (uint8 or float RGB) are normalised inside the module with ImageNet statistics, as CenterNet's. `targets`
  (given in training by the `Detector` contract) is not used: SSD's targets are all read by its loss.
  """

  num_classes: int
  width: int = 64
  batch_norm: bool = True
  extras: Sequence[Sequence[int]] = EXTRAS_128
  aspect_ratios: Sequence[Sequence[float]] = RATIOS_128
  fc6_dilation: int = 6
  l2_norm: bool = True
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    blocks = VGG(width=self.width, batch_norm=self.batch_norm, dtype=self.dtype, name="backbone")(x, train=train)
    sources = SSDNeck(width=self.width, extras=self.extras, fc6_dilation=self.fc6_dilation,
                      batch_norm=self.batch_norm, l2_norm=self.l2_norm, dtype=self.dtype, name="neck")(blocks,
                                                                                                     train=train)
    return SSDHead(self.num_classes, priors_per_cell(self.aspect_ratios), dtype=self.dtype, name="head")(sources)


def ssd_targets(priors: jax.Array, boxes: jax.Array, labels: jax.Array, valid: jax.Array,
                crowd: jax.Array) -> dict[str, jax.Array]:
  """Returns one image's SSD targets (vmap for a batch).

  Args:
    priors: `[P, 4]` xyxy pixels; boxes: `[M, 4]` xyxy pixels; labels: int `[M]` in [0, C); valid, crowd: bool `[M]`.

  Returns a dict of
    labels: int32 `[P]`: 0 background, c + 1 for a prior matched to an object of class c, -1 ignored (covered by a
      crowd region, or a degenerate prior), by `match_ssd`.
    deltas: float32 `[P, 4]`: the matched object encoded against the prior with variances (0.1, 0.2); 0 where the
      prior is not foreground.
  """
  match = match_ssd(priors, boxes, valid, crowd)
  positive = match.labels == FOREGROUND
  matched = jnp.where(positive[:, None], jnp.asarray(boxes, jnp.float32)[match.matched_gt], priors)
  classes = jnp.asarray(labels, jnp.int32)[match.matched_gt] + 1
  return {"labels": jnp.where(positive, classes, match.labels),
          "deltas": jnp.where(positive[:, None], encode_boxes(matched, priors, weights=BOX_WEIGHTS), 0.0)}


def ssd_loss(outputs: dict[str, jax.Array], targets: dict[str, jax.Array], *, negative_ratio: float = 3.0,
             box_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: SSD's MultiBox loss (Liu et al. 2016, eq. 1) over a batch.

  L = (L_conf + alpha L_loc) / N, N the number of positive priors in the batch. L_conf is the softmax
  cross-entropy (background = class 0) summed over the positives and, per image, the `negative_ratio` x
  positives background priors of highest cross-entropy (`hard_negative_mining`); L_loc the smooth L1 (beta 1)
  of the offsets, summed over the 4 coordinates of the positives; alpha = `box_weight` (1 in the paper). A batch
  without positives has no negatives either and gets loss 0 (not 0 / 0). As ssd.pytorch's `MultiBoxLoss` and
  torchvision's `SSD.compute_loss`.
  """
  labels = targets["labels"]
  if outputs["logits"].shape[:2] != labels.shape:
    raise ValueError(f"the head has {outputs['logits'].shape[1]} priors per image but the targets "
                     f"{labels.shape[1]}: the model's layout does not fit the input size")
  cross_entropy = softmax_cross_entropy(outputs["logits"], jnp.maximum(labels, 0))  # [B, P]
  positive = labels > 0
  mining_labels = jnp.where(positive, FOREGROUND, labels)
  negative = jax.vmap(functools.partial(hard_negative_mining, negative_ratio=negative_ratio))(cross_entropy,
                                                                                              mining_labels)
  num_positive = jnp.sum(positive).astype(jnp.float32)
  normaliser = jnp.maximum(num_positive, 1.0)
  conf_loss = jnp.sum(jnp.where(positive | negative, cross_entropy, 0.0)) / normaliser
  box = jnp.sum(smooth_l1_loss(outputs["deltas"] - targets["deltas"], beta=1.0), axis=-1)
  box_loss = jnp.sum(jnp.where(positive, box, 0.0)) / normaliser
  loss = conf_loss + box_weight * box_loss
  return loss, {"loss": loss, "conf_loss": conf_loss, "box_loss": box_loss, "num_positives": num_positive,
                "num_negatives": jnp.sum(negative).astype(jnp.float32)}


def ssd_decode(outputs: dict[str, jax.Array], priors: jax.Array, *, score_threshold: float = 0.01,
               candidates_per_class: int = 200, iou_threshold: float = 0.45, max_detections: int = 100,
               image_shape: tuple[int, int] | None = None) -> Detections:
  """Returns `Detections` with `max_detections` slots per image: SSD's inference.

  Class probabilities are the softmax without its background column; boxes decode the offsets against `priors`
  `[P, 4]` (pixels) with variances (0.1, 0.2). Per image and class the `candidates_per_class` best priors scoring
  above `score_threshold`, class-aware NMS at `iou_threshold`, the best `max_detections` (`select_detections`).
  """
  scores = jax.nn.softmax(outputs["logits"].astype(jnp.float32), axis=-1)[..., 1:]
  boxes = decode_boxes(outputs["deltas"], priors, weights=BOX_WEIGHTS)
  return select_detections(boxes, scores, candidates_per_level=candidates_per_class, per_class=True,
                           score_threshold=score_threshold, iou_threshold=iou_threshold,
                           max_detections=max_detections, image_shape=image_shape)


def _square_side(shape: Sequence[int], what: str) -> int:
  h, w = (int(s) for s in shape)
  if h != w:
    raise ValueError(f"SSD's priors tile square maps: {what} must be square, got {h}x{w}")
  return h


def build_ssd(*, num_classes: int, width: int = 64, batch_norm: bool = True,
              extras: Sequence[Sequence[int]] = EXTRAS_128, aspect_ratios: Sequence[Sequence[float]] = RATIOS_128,
              s_min: float = 0.2, s_max: float = 0.9, fc6_dilation: int = 6, l2_norm: bool = True,
              negative_ratio: float = 3.0, box_weight: float = 1.0, score_threshold: float = 0.01,
              candidates_per_class: int = 200, nms_threshold: float = 0.45, max_detections: int = 100,
              dtype: Any = jnp.float32) -> Detector:
  """Returns the SSD `Detector`: the module and its `assign`, `loss`, `postprocess` (see the module docstring).

  `extras` and `aspect_ratios` (one set per source map, ratios listed without 1 and without reciprocals) fix the
  layout; the priors of an input size are generated for the maps that layout gives it. `dtype` is the compute
  type of the convolutions and batch norms; parameters, head outputs, targets, losses and boxes stay float32.
  """
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"SSD computes in float32, bfloat16 or float16, got dtype {dtype}")
  extras = tuple(tuple(int(v) for v in e) for e in extras)
  aspect_ratios = tuple(tuple(float(r) for r in a) for a in aspect_ratios)
  if len(aspect_ratios) != len(extras) + 2:
    raise ValueError(f"SSD has {len(extras) + 2} source maps (conv4_3, fc7 and {len(extras)} extra layers) but "
                     f"{len(aspect_ratios)} aspect-ratio sets")
  module = SSD(num_classes=num_classes, width=width, batch_norm=batch_norm, extras=extras,
               aspect_ratios=aspect_ratios, fc6_dilation=fc6_dilation, l2_norm=l2_norm, dtype=dtype)
  prior_boxes = functools.partial(ssd_prior_boxes, extras=extras, aspect_ratios=aspect_ratios, s_min=s_min,
                                  s_max=s_max)

  def assign(batch):
    priors = jnp.asarray(prior_boxes(_square_side(batch["image"].shape[1:3], "images")))
    return jax.vmap(functools.partial(ssd_targets, priors))(batch["boxes"], batch["labels"], batch["valid"],
                                                           batch["crowd"])

  def loss(outputs, targets):
    return ssd_loss(outputs, targets, negative_ratio=negative_ratio, box_weight=box_weight)

  def postprocess(outputs, image_shape=None):
    if image_shape is None:
      raise ValueError("SSD's priors are fractions of the image side: postprocess needs image_shape")
    priors = jnp.asarray(prior_boxes(_square_side(image_shape, "image_shape")))
    return ssd_decode(outputs, priors, score_threshold=score_threshold, candidates_per_class=candidates_per_class,
                      iou_threshold=nms_threshold, max_detections=max_detections, image_shape=image_shape)

  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes)
