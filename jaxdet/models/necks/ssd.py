"""SSD's multi-scale body on top of VGG-16 (Liu et al. 2016, fig. 2): L2-normalised conv4_3, fc6 / fc7 as convolutions,
and the extra feature layers, giving the maps the detection heads read.

From the VGG block outputs (`jaxdet.models.backbones.vgg`, strides 1..16):
- conv4_3 (block 4, stride 8) is L2-normalised across channels at each location and multiplied by a learned
  per-channel scale initialised to 20 (`L2Norm`; ParseNet, Liu et al. 2015, which SSD cites: conv4_3's activations
  are much larger than the later maps', so it gets its own learned scale);
- conv5_3 (block 5, stride 16) -> pool5, a 3x3 max pool of stride 1 (SSD changes VGG's 2x2 / 2 pool5 so fc6 stays
  at stride 16) -> fc6, a 3x3 convolution of dilation 6 ("a trous", the subsampled fc6 weights of the paper) ->
  fc7, a 1x1 convolution, both with `16 * width` channels (1,024 at VGG's width 64);
- extra layers: each a 1x1 convolution then a 3x3 convolution (stride 2 with padding 1, or stride 1 without
  padding), every one followed by ReLU; each 3x3 output is a source map.

`width` scales every channel count as it scales VGG's (64 in the paper: conv8_2 has 512 = 8 * 64 channels). The
extra layers are listed in `extras` as `(1x1 channels, 3x3 channels, stride, padding)`, channels in multiples of
`width`. `EXTRAS_300` is SSD300's (conv8_2 ... conv11_2, maps 19 -> 10 -> 5 -> 3 -> 1 after the paper's 38 and 19).
At the 128 x 128 images of `shapes` conv4_3 is 16 x 16 and fc7 8 x 8, so the two unpadded 3x3 layers of SSD300
(5 -> 3 -> 1) cannot follow a 2 x 2 map: `EXTRAS_128` keeps conv8_2 and conv9_2 as in the paper (stride 2) and
replaces conv10_2 / conv11_2 by one stride-2 padded 3x3 layer (as SSD512's extra layers are), which takes 2 x 2
to 1 x 1. The source maps are then 16, 8, 4, 2, 1 (strides 8 ... 128): SSD300's progression (38, 19, 10, 5, 3, 1,
strides about 8 ... 300) with one level fewer, ending, as SSD300 does, in one cell that sees the whole image.

`batch_norm` adds batch norm after every convolution of fc6, fc7 and the extra layers (and VGG's own, via the
backbone's flag). The paper fine-tunes an ImageNet-trained VGG and has none; training from scratch, as every
jaxdet result on `shapes` does, needs it in practice (DSOD, Shen et al. 2017, trains SSD from scratch with
batch-normalised layers).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import Conv, max_pool

# (1x1 channels, 3x3 channels, stride, padding), channels in multiples of the VGG width (64 in the paper).
EXTRAS_300 = ((4, 8, 2, 1), (2, 4, 2, 1), (2, 4, 1, 0), (2, 4, 1, 0))
EXTRAS_128 = ((4, 8, 2, 1), (2, 4, 2, 1), (2, 4, 2, 1))
FC_MULTIPLIER = 16  # fc6 / fc7 channels: 1,024 at width 64
L2NORM_INIT = 20.0


def ssd_feature_sizes(image_size: int, *, extras: Sequence[Sequence[int]] = EXTRAS_128) -> tuple[int, ...]:
  """Returns the sides of SSD's source maps (conv4_3, fc7, then one per extra layer) for a square input.

  VGG's 2x2 pools floor odd sides (a 300 input gives conv4_3 37 x 37, where the paper's Caffe model rounds up to
  38); pool5 and fc6 keep the side; a 3x3 layer of stride s and padding p takes n to floor((n + 2p - 3) / s) + 1.
  """
  n = int(image_size)
  for _ in range(3):
    n //= 2
  sizes = [n, n // 2]
  n //= 2
  for _, _, stride, padding in extras:
    n = (n + 2 * padding - 3) // stride + 1
    if n < 1:
      raise ValueError(f"SSD's extra layers {tuple(extras)} shrink a {image_size} input's maps below 1 x 1; use "
                       f"fewer extra layers or a larger image")
    sizes.append(n)
  return tuple(sizes)


class L2Norm(nn.Module):
  """Returns `x [..., C]` divided by its L2 norm over channels and multiplied by a learned scale `[C]` (init 20).

  ParseNet's layer as SSD applies it to conv4_3. Computed in float32 (a sum of squares of bfloat16 activations
  loses the norm). Where the norm is below `eps` (a location whose channels are all 0 after ReLU), x is divided
  by `eps` instead, so the output is 0 there with a finite gradient; ssd.pytorch divides by `norm + 1e-10`, whose
  gradient at an all-zero location is NaN (the derivative of the square root at 0).
  """

  scale_init: float = L2NORM_INIT
  eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.constant(self.scale_init), (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    squared = jnp.sum(x32 * x32, axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(jnp.maximum(squared, self.eps * self.eps)) * scale
    return y.astype(self.dtype)


class SSDNeck(nn.Module):
  """Returns SSD's source maps `[conv4_3 (L2-normalised), fc7, extra_1, ...]`, each `[B, n_k, n_k, C_k]`.

  Called with VGG's five block outputs (`VGG(...)(x)`). Channels: conv4_3 `8 * width`, fc7 `16 * width`, extra k
  its `extras[k][1] * width`. See the module docstring for the layers.

  Attributes:
    width: VGG's width (64 in the paper).
    extras: the extra layers, `(1x1 channels, 3x3 channels, stride, padding)` with channels in units of `width`.
    fc6_dilation: dilation of fc6's 3x3 convolution (6 in the paper).
    batch_norm: batch norm after every convolution here (module docstring).
    l2_norm: normalise conv4_3 (the paper does).
  """

  width: int = 64
  extras: Sequence[Sequence[int]] = EXTRAS_128
  fc6_dilation: int = 6
  batch_norm: bool = True
  l2_norm: bool = True
  dtype: Any = jnp.float32

  def _conv(self, x, features: int, kernel: int, *, train: bool, name: str, stride: int = 1, padding: int = 0,
            dilation: int = 1):
    x = Conv(features, (kernel, kernel), strides=stride, padding=padding, kernel_dilation=dilation,
             use_bias=not self.batch_norm, dtype=self.dtype, name=name)(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                       name=f"{name}_bn")(x)
    return nn.relu(x)

  @nn.compact
  def __call__(self, blocks: Sequence[jax.Array], *, train: bool) -> list[jax.Array]:
    if len(blocks) != 5:
      raise ValueError(f"SSDNeck reads VGG's five block outputs, got {len(blocks)} maps")
    conv4_3, conv5_3 = blocks[3], blocks[4]
    sources = [L2Norm(dtype=self.dtype, name="conv4_3_norm")(conv4_3) if self.l2_norm else conv4_3]
    x = max_pool(conv5_3, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))  # pool5
    fc = FC_MULTIPLIER * self.width
    x = self._conv(x, fc, 3, train=train, name="fc6", padding=self.fc6_dilation, dilation=self.fc6_dilation)
    x = self._conv(x, fc, 1, train=train, name="fc7")
    sources.append(x)
    for k, (mid, out, stride, padding) in enumerate(self.extras):
      x = self._conv(x, mid * self.width, 1, train=train, name=f"extra{k + 1}_1")
      x = self._conv(x, out * self.width, 3, train=train, name=f"extra{k + 1}_2", stride=stride, padding=padding)
      sources.append(x)
    return sources
