"""The ResNet + FPN body of the dense one-stage detectors (RetinaNet, FCOS) and the bookkeeping of its levels.

A dense detector predicts, on every pyramid level P_l (stride 2^l), a vector per cell (RetinaNet: per anchor of
the cell). Heads return one map per level, `[B, H_l, W_l, A * K]`; `flatten_levels` lays them out as
`[B, sum_l H_l W_l A, K]` in the order of `jaxdet.ops.anchors` (levels finest first, cells row-major, the A
anchors of a cell innermost), so that output row n belongs to anchor (or location) n.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.resnet import ResNet
from jaxdet.models.necks.fpn import FPN
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image

BACKBONE_STRIDE = 32  # ResNet's C5


def pyramid_shapes(image_shape: Sequence[int], levels: Sequence[int]) -> list[tuple[int, int]]:
  """Returns the `(H_l, W_l)` of each pyramid level for images of `image_shape` (h, w).

  Every stride-2 convolution and pooling of the body pads so that a side s becomes ceil(s / 2): level l of an image
  whose sides are multiples of 2^l is exactly `(h / 2^l, w / 2^l)`, and levels beyond the image shrink to 1.
  """
  h, w = (int(s) for s in image_shape)
  shapes = {}
  for level in range(1, max(levels) + 1):
    h, w = -(-h // 2), -(-w // 2)
    shapes[level] = (h, w)
  return [shapes[level] for level in levels]


def check_image_shape(image_shape: Sequence[int], what: str) -> None:
  """Raises a ValueError naming `what` unless both image sides are multiples of the backbone's stride (32)."""
  h, w = (int(s) for s in image_shape)
  if h % BACKBONE_STRIDE or w % BACKBONE_STRIDE:
    raise ValueError(f"{what} needs image sides that are multiples of {BACKBONE_STRIDE}, got {h}x{w}")


def flatten_levels(maps: Sequence[jax.Array], k: int) -> jax.Array:
  """Returns `[B, sum_l H_l W_l A_l, k]` from per-level maps `[B, H_l, W_l, A_l * k]` (row n = anchor n)."""
  return jnp.concatenate([m.reshape(m.shape[0], -1, k) for m in maps], axis=1)


def check_num_rows(outputs: jax.Array, expected: int, what: str) -> None:
  """Raises a ValueError when the head produced `outputs.shape[1]` rows but the targets have `expected`."""
  if outputs.shape[1] != expected:
    raise ValueError(f"{what}: the head produced {outputs.shape[1]} rows but the targets have {expected}; were the "
                     "targets assigned for another image size?")


class ResNetFPN(nn.Module):
  """Returns the FPN levels `[P_min_level, ..., P_max_level]`, each `[B, H / 2^l, W / 2^l, fpn_features]`.

  Images `[B, H, W, 3]` (uint8 or float RGB) are normalised inside the module (`(x - mean) / std`), then go through
  a ResNet (stage outputs C2..C5) and an FPN over C_min_level..C5 (`jaxdet.models.necks.fpn.FPN`, `extra` says
  where the levels above C5 come from).
  """

  depth: int = 18
  width: int = 64
  fpn_features: int = 256
  min_level: int = 3
  max_level: int = 7
  extra: str = "conv_c5"
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> list[jax.Array]:
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    stages = ResNet(depth=self.depth, width=self.width, dtype=self.dtype, name="backbone")(x, train=train)
    return FPN(features=self.fpn_features, min_level=self.min_level, max_level=self.max_level,
               first_backbone_level=2, extra=self.extra, dtype=self.dtype, name="fpn")(stages)
