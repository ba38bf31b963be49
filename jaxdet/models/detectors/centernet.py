"""CenterNet (Zhou et al. 2019, "Objects as Points"): a detector that finds box centres as heatmap peaks.

Composition: ResNet backbone -> transposed-convolution neck to stride R = 4 (Simple Baselines, Xiao et al. 2018)
-> heads (class heatmap, 2-D sub-cell offset, 2-D size). Targets are built on device from padded ground truth
(`assign`), the loss is the paper's L_k + 0.1 L_size + 1 L_off (eq. 4, `loss`), and decoding takes the top-K 3x3
local maxima of the heatmap without NMS (`postprocess`). The reference is the authors' code
(github.com/xingyizhou/CenterNet, `ctdet` targets, `CtdetLoss`, `ctdet_decode`).

Differences from the reference code, each deliberate:
- Crowd boxes (COCO `iscrowd`) are neither positives nor negatives: heatmap cells inside them carry no loss.
  The reference drops crowd annotations and so trains their cells as background.
- Sizes are regressed in input pixels (the paper's s_k), not in output cells (the code's); see `centernet_loss`.
- Plain 3x3 convolutions where the ResNet-DCN variant has deformable ones; optional lateral skip connections
  (`skip_connections`, as DLA-34's up-path has); optional `size_scale` on the size branch (`CenterNetHead`).
- Decoded boxes that come out empty (a negative predicted size, or outside the image after clipping) are invalid.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.resnet import ResNet
from jaxdet.models.detector import Detections, Detector
from jaxdet.models.heads.centernet import CenterNetHead
from jaxdet.models.necks.deconv import DeconvNeck
from jaxdet.ops.boxes import clip_boxes
from jaxdet.ops.coders import decode_centernet, encode_centernet
from jaxdet.ops.heatmaps import gaussian_radius, splat_gaussians
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from jaxdet.ops.losses import penalty_reduced_focal_loss
from jaxdet.ops.peaks import heatmap_peaks


class CenterNet(nn.Module):
  """Returns the head outputs (`CenterNetHead`) at stride `stride` for images `[B, H, W, 3]` (uint8 or float RGB).

  Images are normalised inside the module (`(x - pixel_mean) / pixel_std`, as detectron2 does), so a checkpoint
  runs on raw pixels. H and W must be multiples of 32 (the backbone's stride). `targets` (given in training by
  the `Detector` contract) is not used: CenterNet's targets are all read by its loss.
  """

  num_classes: int
  depth: int = 18
  width: int = 64
  neck_features: Sequence[int] = (256, 128, 64)
  skip_connections: bool = False
  head_features: int = 64
  size_scale: float = 1.0
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  stride = 4  # stride-32 backbone map, upsampled 8x by the three-step neck

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    features = ResNet(depth=self.depth, width=self.width, dtype=self.dtype, name="backbone")(x, train=train)
    x = DeconvNeck(features=tuple(self.neck_features), skip_connections=self.skip_connections, dtype=self.dtype,
                   name="neck")(features, train=train)
    return CenterNetHead(self.num_classes, head_features=self.head_features, size_scale=self.size_scale,
                         dtype=self.dtype, name="head")(x)


def centernet_targets(boxes: jax.Array, labels: jax.Array, valid: jax.Array, crowd: jax.Array, *,
                      output_shape: tuple[int, int], num_classes: int, stride: int,
                      min_overlap: float = 0.7) -> dict[str, jax.Array]:
  """Returns one image's CenterNet targets (vmap for a batch).

  Args:
    boxes: `[M, 4]` xyxy input pixels; labels: int `[M]`; valid, crowd: bool `[M]` (padded ground truth).
    output_shape: (h, w) of the stride-`stride` output map.

  Returns a dict of
    heatmap `[h, w, C]`: gaussians (CornerNet radius of the box in output cells, at least 0) with peak 1 at each
      object's centre cell floor(p / R); element-wise max where objects overlap.
    ignore `[h, w]` bool: cells whose centre lies inside a crowd box (half-open, as pixels), which take no
      heatmap loss (unless an object's peak is there).
    index `[M]` int32: flat centre cell i * w + j; offset `[M, 2]`: p / R - floor(p / R); size `[M, 2]`: (w, h)
      in input pixels; mask `[M]` bool: objects that carry a loss (valid, not crowd, positive size).
  """
  h, w = output_shape
  boxes = jnp.asarray(boxes, jnp.float32)
  finite = jnp.all(jnp.isfinite(boxes), axis=-1)
  boxes = jnp.where(finite[:, None], clip_boxes(boxes, height=h * stride, width=w * stride), 0.0)
  cells, offsets, sizes = encode_centernet(boxes, stride=stride)
  cells = jnp.clip(cells, 0, jnp.array([h - 1, w - 1]))
  mask = jnp.asarray(valid, bool) & ~jnp.asarray(crowd, bool) & finite & jnp.all(sizes > 0, axis=-1)
  # The reference rounds the output-cell size up before the radius (`gaussian_radius((ceil(h), ceil(w)))`).
  radii = jnp.floor(gaussian_radius(jnp.ceil(sizes[:, 1] / stride), jnp.ceil(sizes[:, 0] / stride),
                                    min_overlap=min_overlap))
  heatmap = splat_gaussians(cells, radii.astype(jnp.int32), labels, mask, shape=(h, w), num_classes=num_classes)

  centers_y = (jnp.arange(h, dtype=jnp.float32) + 0.5) * stride
  centers_x = (jnp.arange(w, dtype=jnp.float32) + 0.5) * stride
  crowd_boxes = jnp.asarray(valid, bool) & jnp.asarray(crowd, bool) & finite
  in_y = (centers_y[None, :] >= boxes[:, 1, None]) & (centers_y[None, :] < boxes[:, 3, None])  # [M, h]
  in_x = (centers_x[None, :] >= boxes[:, 0, None]) & (centers_x[None, :] < boxes[:, 2, None])  # [M, w]
  ignore = jnp.any(crowd_boxes[:, None, None] & in_y[:, :, None] & in_x[:, None, :], axis=0)
  return {"heatmap": heatmap, "ignore": ignore & (jnp.max(heatmap, axis=-1) < 1.0),
          "index": cells[:, 0] * w + cells[:, 1], "offset": offsets, "size": sizes, "mask": mask}


def centernet_loss(outputs: dict[str, jax.Array], targets: dict[str, jax.Array], *, size_weight: float = 0.1,
                   offset_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns `(loss, metrics)`: L_k + size_weight L_size + offset_weight L_off over a batch (CenterNet eq. 4).

  As the reference code: the penalty-reduced focal loss (alpha 2, beta 4), summed over all heatmap cells but
  ignored ones, is divided by the number of positive cells (heatmap == 1; at least 1); the L1 losses of offset and
  size at the objects' centre cells are averaged over their two coordinates and divided by the number of objects
  that carry a loss (`RegL1Loss`). Sizes are in input pixels, so `size_weight` 0.1 here weighs as 0.4 would on the
  reference's output-cell sizes at stride 4.
  """
  num_positive = jnp.maximum(jnp.sum(targets["heatmap"] == 1.0), 1).astype(jnp.float32)
  num_objects = jnp.maximum(jnp.sum(targets["mask"]), 1).astype(jnp.float32)
  focal = penalty_reduced_focal_loss(outputs["heatmap"], targets["heatmap"])
  heatmap_loss = jnp.sum(jnp.where(targets["ignore"][..., None], 0.0, focal)) / num_positive

  def regression(pred: jax.Array, target: jax.Array) -> jax.Array:
    b, h, w, d = pred.shape
    at_centres = jnp.take_along_axis(pred.reshape(b, h * w, d), targets["index"][..., None], axis=1)
    l1 = jnp.mean(jnp.abs(at_centres - target), axis=-1)
    return jnp.sum(jnp.where(targets["mask"], l1, 0.0)) / num_objects

  size_loss = regression(outputs["size"], targets["size"])
  offset_loss = regression(outputs["offset"], targets["offset"])
  loss = heatmap_loss + size_weight * size_loss + offset_weight * offset_loss
  return loss, {"loss": loss, "heatmap_loss": heatmap_loss, "size_loss": size_loss, "offset_loss": offset_loss,
                "num_objects": num_objects}


def centernet_decode(outputs: dict[str, jax.Array], *, stride: int, k: int = 100,
                     image_shape: tuple[int, int] | None = None) -> Detections:
  """Returns `Detections` with `k` slots per image: the top-k 3x3 local maxima of the heatmap, no NMS.

  Each peak (i, j) of class c becomes the box centred at ((j + ox) R, (i + oy) R) with the predicted (w, h),
  clipped to `image_shape` (h, w) input pixels when given, which must be the output map's size times `stride`.
  Slots whose score is 0 (fewer than k cells) or whose box is empty are invalid.
  """
  heat = jax.nn.sigmoid(outputs["heatmap"])
  if image_shape is not None and (heat.shape[1] * stride, heat.shape[2] * stride) != tuple(image_shape):
    raise ValueError(f"a {heat.shape[1]}x{heat.shape[2]} output map at stride {stride} does not cover a "
                     f"{image_shape[0]}x{image_shape[1]} image (sides must be multiples of 32)")
  scores, classes, ys, xs = jax.vmap(lambda hm: heatmap_peaks(hm, k=k))(heat)
  b, _, w, _ = heat.shape
  flat = (ys * w + xs)[..., None]

  def gather(x):
    return jnp.take_along_axis(x.reshape(b, -1, x.shape[-1]), flat, axis=1)

  boxes = decode_centernet(jnp.stack([ys, xs], axis=-1), gather(outputs["offset"]), gather(outputs["size"]),
                           stride=stride)
  if image_shape is not None:
    boxes = clip_boxes(boxes, height=image_shape[0], width=image_shape[1])
  nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
  return Detections(boxes=boxes, scores=scores, classes=classes, valid=(scores > 0) & nonempty)


def merge_flipped(outputs: dict[str, jax.Array], flipped: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Returns CenterNet's flip-test outputs: heatmap probabilities and sizes averaged with the mirrored pass.

  `flipped` are the outputs for the horizontally flipped images; offsets come from the unflipped pass only, as in
  the reference (a mirrored offset is not the offset of the mirrored cell). The averaged probability goes back to
  a logit (clamped 1e-6 away from 0 and 1), so `centernet_decode` reads both kinds of outputs alike.
  """
  mirror = lambda x: x[:, :, ::-1, :]  # noqa: E731
  heat = (jax.nn.sigmoid(outputs["heatmap"]) + mirror(jax.nn.sigmoid(flipped["heatmap"]))) / 2
  heat = jnp.clip(heat, 1e-6, 1 - 1e-6)
  size = (outputs["size"] + mirror(flipped["size"])) / 2
  return {"heatmap": jnp.log(heat) - jnp.log1p(-heat), "offset": outputs["offset"], "size": size}


def build_centernet(*, num_classes: int, depth: int = 18, width: int = 64,
                    neck_features: Sequence[int] = (256, 128, 64), skip_connections: bool = False,
                    head_features: int = 64, size_scale: float = 1.0, size_weight: float = 0.1,
                    offset_weight: float = 1.0, max_detections: int = 100, min_overlap: float = 0.7,
                    dtype: Any = jnp.float32) -> Detector:
  """Returns the CenterNet `Detector`: the module and its `assign`, `loss`, `postprocess` (see module docstring).

  `dtype` is the compute type of the convolutions and batch norms (e.g. "bfloat16"); parameters, head outputs,
  targets, losses and decoded boxes stay float32.
  """
  if len(neck_features) != 3:
    raise ValueError(f"CenterNet's neck has three 2x upsampling steps (stride 32 -> 4), got {neck_features}")
  dtype = jnp.dtype(dtype)  # also from a config string, "bfloat16"
  if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
    raise ValueError(f"CenterNet computes in float32, bfloat16 or float16, got dtype {dtype}")
  module = CenterNet(num_classes=num_classes, depth=depth, width=width, neck_features=tuple(neck_features),
                     skip_connections=skip_connections, head_features=head_features, size_scale=size_scale,
                     dtype=dtype)
  stride = CenterNet.stride

  def assign(batch):
    _, height, width_px, _ = batch["image"].shape
    if height % 32 or width_px % 32:
      raise ValueError(f"CenterNet needs image sides that are multiples of 32, got {height}x{width_px}")
    targets_fn = lambda b, l, v, c: centernet_targets(  # noqa: E731
        b, l, v, c, output_shape=(height // stride, width_px // stride), num_classes=num_classes, stride=stride,
        min_overlap=min_overlap)
    return jax.vmap(targets_fn)(batch["boxes"], batch["labels"], batch["valid"], batch["crowd"])

  def loss(outputs, targets):
    return centernet_loss(outputs, targets, size_weight=size_weight, offset_weight=offset_weight)

  def postprocess(outputs, image_shape=None):
    return centernet_decode(outputs, stride=stride, k=max_detections, image_shape=image_shape)

  return Detector(module=module, assign=assign, loss=loss, postprocess=postprocess, num_classes=num_classes,
                  merge_flipped=merge_flipped)
