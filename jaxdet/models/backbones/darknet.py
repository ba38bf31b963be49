"""The Darknet backbones of the YOLO family in Flax, NHWC: YOLOv1's 24-convolution network, Fast YOLO's,
Darknet-19 (YOLOv2) and Darknet-53 (YOLOv3, residual). Every layer is a convolution, optional batch norm and leaky
ReLU 0.1 (`ConvBNLeaky`), the unit Darknet-53 and the CSP variants are built from as well.

`width` scales every layer's channels from the reference's (64 first-layer channels for YOLOv1, 32 for Darknet-19)
so that the networks train from scratch on a CPU (Darknet-53 also scales its depth, the residual blocks per stage).
`output_stride` removes the last downsampling steps (a max pool
or YOLOv1's strided convolution becomes the identity / stride 1) so that a small image still gives a useful grid:
on 128 x 128 images the reference strides (64 for YOLOv1, 32 for Darknet-19) leave 2 x 2 and 4 x 4 cells.
Each backbone returns a dict `{stride: feature map}` holding the last map at every stride it reaches, so a detector
picks YOLOv2's passthrough source as `features[output_stride // 2]`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.cmbn import batch_norm
from jaxdet.models.layers import Conv, max_pool

# A layer is (channels at width 64 -- YOLOv1 -- or 32 -- Darknet-19, kernel, stride) or "M" (2x2 max pool).
# YOLOv1 (Redmon et al. 2016, Figure 3): 24 convolutions; its last downsampling is the strided 3x3 convolution.
YOLOV1_LAYERS = (
    (64, 7, 2), "M", (192, 3, 1), "M",
    (128, 1, 1), (256, 3, 1), (256, 1, 1), (512, 3, 1), "M",
    *((256, 1, 1), (512, 3, 1)) * 4, (512, 1, 1), (1024, 3, 1), "M",
    *((512, 1, 1), (1024, 3, 1)) * 2, (1024, 3, 1), (1024, 3, 2),
    (1024, 3, 1), (1024, 3, 1),
)
# Fast YOLO as released (darknet `yolov1-tiny.cfg`): eight 3x3 convolutions and six max pools at width 16; the
# paper's "9 layers" counts the fully connected output layer as well.
FAST_YOLOV1_LAYERS = (
    (16, 3, 1), "M", (32, 3, 1), "M", (64, 3, 1), "M", (128, 3, 1), "M", (256, 3, 1), "M", (512, 3, 1), "M",
    (1024, 3, 1), (256, 3, 1),
)
# Darknet-19 (Redmon & Farhadi 2017, Table 6) without its 1x1 classifier: 18 convolutions, five max pools.
DARKNET19_LAYERS = (
    (32, 3, 1), "M", (64, 3, 1), "M",
    (128, 3, 1), (64, 1, 1), (128, 3, 1), "M",
    (256, 3, 1), (128, 1, 1), (256, 3, 1), "M",
    (512, 3, 1), (256, 1, 1), (512, 3, 1), (256, 1, 1), (512, 3, 1), "M",
    (1024, 3, 1), (512, 1, 1), (1024, 3, 1), (512, 1, 1), (1024, 3, 1),
)


def mish(x: jax.Array) -> jax.Array:
  """Returns `x tanh(softplus(x))` elementwise: Mish (Misra 2019), YOLOv4's backbone activation."""
  return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS = {"leaky": lambda x: nn.leaky_relu(x, 0.1), "mish": mish, "linear": lambda x: x}


class ConvBNLeaky(nn.Module):
  """Returns `leaky_relu(bn(conv(x)), 0.1)`: Darknet's convolutional layer (batch norm optional, 'same' padding).

  Without batch norm the convolution has a bias (YOLOv1 as published); with it, batch norm's offset replaces the
  bias (YOLOv2 and Darknet's later configs). `activation` "mish" (CSPDarknet-53) or "linear" replaces the leaky ReLU.
  `cmbn` > 1: the batch norm is YOLOv4's CmBN over that many mini-batches (`jaxdet.models.cmbn`).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  batch_norm: bool = True
  activation: str = "leaky"
  cmbn: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    k = self.kernel_size
    x = Conv(self.features, (k, k), strides=self.strides, padding=k // 2, use_bias=not self.batch_norm,
             dtype=self.dtype, name="conv")(x)
    if self.batch_norm:
      x = batch_norm(self.cmbn, train=train, dtype=self.dtype)(x)
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
    return ACTIVATIONS[self.activation](x)


def _downsamplings(layers: Sequence[Any]) -> list[int]:
  return [i for i, layer in enumerate(layers) if layer == "M" or layer[2] == 2]


class DarknetStack(nn.Module):
  """Returns `{stride: [B, H / stride, W / stride, C]}`, the last map at each stride of a plain Darknet stack.

  Attributes:
    layers: `YOLOV1_LAYERS`, `FAST_YOLOV1_LAYERS`, `DARKNET19_LAYERS` or another sequence of
      `(channels, kernel, stride)` / "M".
    width: first-layer channels; every layer's channels scale by `width / reference_width` (at least 1).
    reference_width: the first layer's channels in `layers` (64, 16 or 32 for the three above).
    output_stride: the total stride; downsampling steps beyond it, counted from the end, become stride 1.
    batch_norm: batch norm after every convolution.
  """

  layers: Sequence[Any]
  width: int
  reference_width: int
  output_stride: int
  batch_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool) -> dict[int, jnp.ndarray]:
    downs = _downsamplings(self.layers)
    full_stride = 2 ** len(downs)
    if self.output_stride not in [2 ** k for k in range(len(downs) + 1)]:
      raise ValueError(f"output_stride must be a power of 2 up to {full_stride}, got {self.output_stride}")
    keep = set(downs[:len(downs) - (full_stride // self.output_stride).bit_length() + 1])
    x = x.astype(self.dtype)
    stride, features, conv = 1, {}, 0
    for i, layer in enumerate(self.layers):
      if layer == "M":
        if i in keep:
          features[stride] = x
          x = max_pool(x, (2, 2), strides=(2, 2))
          stride *= 2
        continue
      channels, kernel, layer_stride = layer
      if layer_stride == 2 and i in keep:
        features[stride] = x
        stride *= 2
      conv += 1
      x = ConvBNLeaky(max(1, channels * self.width // self.reference_width), kernel,
                      strides=layer_stride if i in keep else 1, batch_norm=self.batch_norm, dtype=self.dtype,
                      name=f"conv{conv}")(x, train=train)
    features[stride] = x
    return features


class YOLOv1Backbone(nn.Module):
  """Returns `{stride: map}` of YOLOv1's 24-convolution network (or Fast YOLO's 8, `fast=True`), see `DarknetStack`.

  `width` is the first layer's channels (64 in the paper, 16 in Fast YOLO); `output_stride` 64 is the paper's
  (448 -> 7 x 7). `batch_norm` is off in the paper; it is the default here because the network is trained from
  scratch in minutes rather than pretrained on ImageNet for a week.
  """

  width: int = 64
  output_stride: int = 64
  fast: bool = False
  batch_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool) -> dict[int, jnp.ndarray]:
    layers, reference = (FAST_YOLOV1_LAYERS, 16) if self.fast else (YOLOV1_LAYERS, 64)
    return DarknetStack(layers, width=self.width, reference_width=reference, output_stride=self.output_stride,
                        batch_norm=self.batch_norm, dtype=self.dtype, name="stack")(x, train=train)


class Darknet19(nn.Module):
  """Returns `{stride: map}` of Darknet-19 (YOLOv2's backbone without its classifier), see `DarknetStack`.

  `width` is the first layer's channels (32 in the paper, so the last stage has 32 x width); `output_stride` 32 is
  the paper's (416 -> 13 x 13). The passthrough source is the map at `output_stride // 2`: conv5_5 (26 x 26 x 512
  at 416) in the paper.
  """

  width: int = 32
  output_stride: int = 32
  batch_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool) -> dict[int, jnp.ndarray]:
    return DarknetStack(DARKNET19_LAYERS, width=self.width, reference_width=32, output_stride=self.output_stride,
                        batch_norm=self.batch_norm, dtype=self.dtype, name="stack")(x, train=train)


# Darknet-53 (Redmon & Farhadi 2018, Table 1): a 3x3 convolution of 32 channels, then five stages, each a strided
# 3x3 convolution doubling the channels followed by residual blocks; the blocks per stage.
DARKNET53_DEPTHS = (1, 2, 8, 8, 4)


class DarknetResidual(nn.Module):
  """Returns `x + conv3x3(conv1x1(x))`: Darknet-53's residual block (1x1 halving the channels, 3x3 restoring them,
  each `ConvBNLeaky`; darknet's `shortcut` layer adds after the activation, linear)."""

  features: int
  cmbn: int = 1  # CmBN mini-batches (jaxdet.models.cmbn); 1: plain batch norm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = ConvBNLeaky(max(1, self.features // 2), 1, cmbn=self.cmbn, dtype=self.dtype, name="reduce")(x, train=train)
    return x + ConvBNLeaky(self.features, 3, cmbn=self.cmbn, dtype=self.dtype, name="expand")(y, train=train)


class Darknet53(nn.Module):
  """Returns `{stride: [B, H / stride, W / stride, C]}` for strides 1, 2, ..., 32: Darknet-53 without its classifier
  (the last map at each stride; YOLOv3 reads strides 8, 16 and 32: 4, 8 and 16 x `width` channels, 256, 512, 1024
  in the paper).

  Attributes:
    width: the first layer's channels (32 in the paper); stage k (stride 2^k) has 2^k x width.
    depths: residual blocks of the five stages (`DARKNET53_DEPTHS`, 1 + 2 + 8 + 8 + 4 blocks: with the six other
      convolutions and the classifier, the paper's 53 layers).
  """

  width: int = 32
  depths: Sequence[int] = DARKNET53_DEPTHS
  cmbn: int = 1  # CmBN mini-batches (jaxdet.models.cmbn); 1: plain batch norm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool) -> dict[int, jnp.ndarray]:
    if len(self.depths) != 5 or min(self.depths) < 0:
      raise ValueError(f"Darknet-53 has five stages: depths must be 5 non-negative counts, got {self.depths}")
    x = ConvBNLeaky(self.width, 3, cmbn=self.cmbn, dtype=self.dtype, name="stem")(x.astype(self.dtype), train=train)
    features = {1: x}
    for stage, depth in enumerate(self.depths, start=1):
      channels = self.width * 2 ** stage
      x = ConvBNLeaky(channels, 3, strides=2, cmbn=self.cmbn, dtype=self.dtype, name=f"down{stage}")(x, train=train)
      for block in range(depth):
        x = DarknetResidual(channels, cmbn=self.cmbn, dtype=self.dtype, name=f"stage{stage}_block{block + 1}")(
            x, train=train)
      features[2 ** stage] = x
    return features
