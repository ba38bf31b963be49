"""YOLOv2's passthrough layer (Redmon & Farhadi 2017, sec. 2 "Fine-Grained Features"; darknet's `reorg`).

The stride-s/2 map is reduced by a 1x1 convolution, rearranged to stride s by space-to-depth (each 2 x 2 block of
cells becomes one cell with 4x the channels) and concatenated with the stride-s map, so the detection layer sees
fine features without upsampling.

Channel order of `space_to_depth` (block b): output channel `(dy * b + dx) * C + c` of cell (i, j) is input channel
c of cell (b i + dy, b j + dx) -- TensorFlow's `tf.nn.space_to_depth` (NHWC) order. Darknet's `reorg`
layer rearranges differently: its index arithmetic on NCHW memory mixes the channel and spatial indices, so one of
its output cells does not hold exactly its own 2 x 2 input block. This module keeps each cell's own block, as most
re-implementations do; darknet weights of the layers after the passthrough would not load unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.darknet import ConvBNLeaky


def space_to_depth(x: jax.Array, block: int = 2) -> jax.Array:
  """Returns `[B, H / block, W / block, block * block * C]`: each block x block patch of `x [B, H, W, C]` stacked
  along channels in the order documented in the module docstring (that of `tf.nn.space_to_depth`)."""
  b, h, w, c = x.shape
  if h % block or w % block:
    raise ValueError(f"space_to_depth needs sides divisible by {block}, got {h}x{w}")
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


class Passthrough(nn.Module):
  """Returns `[B, H, W, 4 * features + C]`: `concat([space_to_depth(conv1x1(fine)), coarse])`.

  `fine` is `[B, 2H, 2W, C']` (conv5_5 of Darknet-19), `coarse` is `[B, H, W, C]`; `features` is the 1x1
  convolution's width (64 in yolo-voc.cfg). The reorganised fine features come first, as darknet's
  `route layers=-1,-4` orders them.
  """

  features: int = 64
  batch_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, fine, coarse, *, train: bool):
    if fine.shape[1] != 2 * coarse.shape[1] or fine.shape[2] != 2 * coarse.shape[2]:
      raise ValueError(f"the passthrough source {fine.shape} must have twice the resolution of {coarse.shape}")
    fine = ConvBNLeaky(self.features, 1, batch_norm=self.batch_norm, dtype=self.dtype, name="reduce")(fine,
                                                                                                    train=train)
    return jnp.concatenate([space_to_depth(fine, 2), coarse.astype(fine.dtype)], axis=-1)
