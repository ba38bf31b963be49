"""The single stride-16 feature map of the Fast / Faster R-CNN family: ResNet to C4, or VGG-16 to conv5_3."""

from __future__ import annotations

from typing import Any

import jax

from jaxdet.models.backbones.resnet import ResNet
from jaxdet.models.backbones.vgg import VGG


def stride16_features(x: jax.Array, *, backbone: str, depth: int, width: int, batch_norm: bool, dtype: Any,
                      train: bool, name: str) -> jax.Array:
  """Returns the stride-16 map `[B, H / 16, W / 16, D]` of normalised images `x [B, H, W, 3]`.

  "resnet": the first three stages of ResNet-`depth` (C4, He et al. 2016's Faster R-CNN backbone); "vgg": VGG-16 to
  conv5_3 without the last max-pool (Fast R-CNN's). Call from a compact method: the backbone is a submodule `name`.
  """
  if backbone == "vgg":
    return VGG(width=width, batch_norm=batch_norm, dtype=dtype, name=name)(x, train=train)[4]
  if backbone == "resnet":
    return ResNet(depth=depth, width=width, num_stages=3, dtype=dtype, name=name)(x, train=train)[-1]
  raise ValueError(f"backbone must be resnet or vgg, got {backbone!r}")
