"""ResNet backbones (He et al. 2016) in Flax, NHWC, returning the feature map of every stage.

ResNet-18/34 use basic blocks (two 3x3 convolutions); `width` scales every stage's channels so that a narrow
ResNet-18 trains from scratch on a CPU. Batch statistics are computed over the whole global batch: under `jit`
with the batch sharded over a device mesh, XLA inserts the cross-device reductions, so the result does not
depend on the number of devices (synchronised batch norm by construction).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdet.models.layers import Conv, max_pool

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34); a 1x1 projection when the shape changes."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype)
    y = conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.features, (3, 3), padding=1, name="conv2")(y)
    # Zero-init the last scale of each residual branch, so every block starts as the identity (Goyal et al. 2017).
    y = norm(scale_init=nn.initializers.zeros, name="bn2")(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = conv(self.features, (1, 1), strides=self.strides, name="proj")(x)
      x = norm(name="proj_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Returns the list of stage outputs `[B, H/4, W/4, w], [B, H/8, W/8, 2w], ..., [B, H/32, W/32, 8w]`.

  Attributes:
    depth: 18 or 34 (basic blocks).
    width: channels of the first stage (64 in the paper); stage k has `width * 2**k`.
    num_stages: how many of the four stages to build (3 stops at C4, stride 16: single-map Faster R-CNN, whose
      RoI head may run the fourth stage on each RoI).
  """

  depth: int = 18
  width: int = 64
  num_stages: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool) -> Sequence[jnp.ndarray]:
    if self.depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {self.depth}")
    x = x.astype(self.dtype)
    x = Conv(self.width, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype, name="stem_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                     name="stem_bn")(x)
    x = max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outputs = []
    for stage, num_blocks in enumerate(STAGE_SIZES[self.depth][:self.num_stages]):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.width * 2**stage, strides=strides, dtype=self.dtype,
                       name=f"stage{stage + 1}_block{block + 1}")(x, train=train)
      outputs.append(x)
    return outputs
