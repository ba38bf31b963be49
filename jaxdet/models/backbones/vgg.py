"""VGG-16 (Simonyan and Zisserman 2015) in Flax, NHWC, returning the output of each of its five blocks.

The 13 3x3 convolutions conv1_1 ... conv5_3, with a 2x2 max pool before blocks 2-5 (the pool after conv5_3 is
left out, as Faster R-CNN and SSD do): block outputs have strides 1, 2, 4, 8, 16 — conv5_3 at stride 16 is Faster
R-CNN's feature map, conv4_3 at stride 8 is SSD's first. `width` scales every block's channels (64 in the paper)
so that VGG trains from scratch on a CPU; `batch_norm` adds batch norm after each convolution (VGG-16-BN), which
training from scratch needs in practice (the paper's VGG was trained in stages from an 11-layer net).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdet.models.layers import Conv, max_pool

BLOCKS = (2, 2, 3, 3, 3)  # convolutions per block, VGG-16
CHANNEL_MULTIPLIERS = (1, 2, 4, 8, 8)


class VGG(nn.Module):
  """Returns the list of the five block outputs `[B, H, W, w], [B, H/2, W/2, 2w], ..., [B, H/16, W/16, 8w]`.

  Attributes:
    width: channels of block 1 (64 in the paper); block k has `width * (1, 2, 4, 8, 8)[k]`.
    batch_norm: batch norm after every convolution.
    blocks: convolutions per block ((2, 2, 3, 3, 3) is VGG-16).
  """

  width: int = 64
  batch_norm: bool = True
  blocks: Sequence[int] = BLOCKS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool) -> list[jnp.ndarray]:
    x = x.astype(self.dtype)
    outputs = []
    for b, (num_convs, multiplier) in enumerate(zip(self.blocks, CHANNEL_MULTIPLIERS, strict=True)):
      if b > 0:
        x = max_pool(x, (2, 2), strides=(2, 2))
      for c in range(num_convs):
        x = Conv(self.width * multiplier, (3, 3), padding=1, use_bias=not self.batch_norm, dtype=self.dtype,
                 name=f"conv{b + 1}_{c + 1}")(x)
        if self.batch_norm:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                           name=f"bn{b + 1}_{c + 1}")(x)
        x = nn.relu(x)
      outputs.append(x)
    return outputs
