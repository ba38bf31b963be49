"""CSPDarknet-53 (Wang et al. 2020, "CSPNet"; Bochkovskiy et al. 2020, "YOLOv4", sec. 3.4), NHWC: Darknet-53 with
each stage split into a cross-stage partial pair and Mish activations (darknet `yolov4.cfg`).

A stage (`CSPStage`): a strided 3x3 convolution doubling the channels; two 1x1 convolutions of it, the shortcut
part and the main part; the main part goes through the stage's residual blocks (`DarknetResidual` with Mish) and a
1x1 transition; the two parts are concatenated (main first, as darknet's `route layers = -1, -10`) and fused by a
1x1 convolution to the stage's channels. Only half the channels pass the residual blocks, so the gradient through
the shortcut part is not duplicated along the stage (CSPNet's argument) and the stage costs less than Darknet-53's.
Stage 1 (darknet's first, one block) keeps the full channels in both parts and halves inside its block; the others
halve the parts and keep them through the blocks.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdet.models.backbones.darknet import DARKNET53_DEPTHS, ConvBNLeaky


class CSPResidual(nn.Module):
  """Returns `x + conv3x3(conv1x1(x))` with Mish: the residual block of a CSP stage (`hidden` channels in between)."""

  features: int
  hidden: int
  activation: str = "mish"
  cmbn: int = 1  # CmBN mini-batches (jaxdet.models.cmbn); 1: plain batch norm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = ConvBNLeaky(self.hidden, 1, activation=self.activation, cmbn=self.cmbn, dtype=self.dtype, name="reduce")(
        x, train=train)
    return x + ConvBNLeaky(self.features, 3, activation=self.activation, cmbn=self.cmbn, dtype=self.dtype,
                           name="expand")(y, train=train)


class CSPStage(nn.Module):
  """Returns `[B, H / 2, W / 2, features]`: one CSPDarknet stage of `depth` residual blocks (module docstring).

  `first`: stage 1's layout (parts of `features` channels, blocks halving to features / 2 inside).
  """

  features: int
  depth: int
  first: bool = False
  activation: str = "mish"
  cmbn: int = 1  # CmBN mini-batches (jaxdet.models.cmbn); 1: plain batch norm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = lambda c, k, name, s=1: ConvBNLeaky(max(1, c), k, strides=s, activation=self.activation,  # noqa: E731
                                               cmbn=self.cmbn, dtype=self.dtype, name=name)
    part = self.features if self.first else self.features // 2
    x = conv(self.features, 3, "down", 2)(x, train=train)
    shortcut = conv(part, 1, "shortcut")(x, train=train)
    main = conv(part, 1, "main")(x, train=train)
    hidden = self.features // 2 if self.first else part
    for block in range(self.depth):
      main = CSPResidual(max(1, part), max(1, hidden), activation=self.activation, cmbn=self.cmbn, dtype=self.dtype,
                         name=f"block{block + 1}")(main, train=train)
    main = conv(part, 1, "transition")(main, train=train)
    return conv(self.features, 1, "fuse")(jnp.concatenate([main, shortcut], axis=-1), train=train)


class CSPDarknet53(nn.Module):
  """Returns `{stride: [B, H / stride, W / stride, C]}` for strides 1, 2, ..., 32: CSPDarknet-53 without its classifier
  (YOLOv4 reads strides 8, 16 and 32: 8, 16 and 32 x `width` channels, 256, 512, 1024 in the paper).

  Attributes:
    width: the stem's channels (32 in the paper); stage k (stride 2^k) has 2^k x width.
    depths: residual blocks of the five stages (Darknet-53's (1, 2, 8, 8, 4)).
    activation: "mish" (the paper); "leaky" for the ablation.
  """

  width: int = 32
  depths: Sequence[int] = DARKNET53_DEPTHS
  activation: str = "mish"
  cmbn: int = 1  # CmBN mini-batches (jaxdet.models.cmbn); 1: plain batch norm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    if len(self.depths) != 5 or min(self.depths) < 0:
      raise ValueError(f"CSPDarknet-53 has five stages: depths must be 5 non-negative counts, got {self.depths}")
    x = ConvBNLeaky(self.width, 3, activation=self.activation, cmbn=self.cmbn, dtype=self.dtype, name="stem")(
        x.astype(self.dtype), train=train)
    features = {1: x}
    for stage, depth in enumerate(self.depths, start=1):
      x = CSPStage(self.width * 2 ** stage, depth, first=stage == 1, activation=self.activation, cmbn=self.cmbn,
                   dtype=self.dtype, name=f"stage{stage}")(x, train=train)
      features[2 ** stage] = x
    return features
