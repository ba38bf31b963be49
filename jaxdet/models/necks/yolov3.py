"""YOLOv3's feature pyramid (Redmon & Farhadi 2018, sec. 2.3; darknet `yolov3.cfg`): upsample and concatenate.

From the coarsest backbone map down: a set of five convolutions (1x1, 3x3, 1x1, 3x3, 1x1) whose output feeds both a
3x3 convolution (this scale's detection features, the head's 1x1 convolution follows) and, through a 1x1
convolution halving the channels and a nearest 2x upsampling, the next finer scale, where it is concatenated with the
backbone map of that stride (upsampled features first, as darknet's `route layers = -1, 61`). Unlike FPN
(`necks/fpn.py`) the paths join by concatenation, not addition, and each scale has its own convolutions.

Channels follow the paper at `width` 32: the 1x1 convolutions of the stride-32 set have 16 x width (512), the 3x3
ones 32 x width (1024); each finer scale halves both.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.darknet import ConvBNLeaky


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """Returns `[B, factor H, factor W, C]`: each cell of `x [B, H, W, C]` repeated over a factor x factor block
  (darknet's `upsample` layer, torch's `interpolate(mode="nearest")`)."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class YOLOv3Neck(nn.Module):
  """Returns `{stride: [B, H / stride, W / stride, C_s]}`: the detection features at each of `strides`.

  `features` is the backbone's `{stride: map}` (`Darknet53`); `strides` ascend, each twice the previous ((8, 16, 32)
  in the paper). C_s is 32 x width at the coarsest stride (1024 in the paper) and half as many at each finer one.
  """

  strides: Sequence[int] = (8, 16, 32)
  width: int = 32
  cmbn: int = 1  # CmBN mini-batches (jaxdet.models.cmbn); 1: plain batch norm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[int, jax.Array], *, train: bool) -> dict[int, jax.Array]:
    strides = tuple(self.strides)
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
      raise ValueError(f"YOLOv3's neck joins scales by 2x upsampling: strides must double, got {strides}")
    missing = [s for s in strides if s not in features]
    if missing:
      raise ValueError(f"the backbone has no map at strides {missing} (it has {sorted(features)})")
    conv = lambda c, k, name: ConvBNLeaky(max(1, c), k, cmbn=self.cmbn, dtype=self.dtype, name=name)  # noqa: E731
    outputs, lateral = {}, None
    for level, stride in enumerate(reversed(strides)):
      wide = 32 * self.width // 2 ** level  # 3x3 channels: 1024, 512, 256 in the paper
      x = features[stride]
      if lateral is not None:
        x = jnp.concatenate([upsample_nearest(lateral), x.astype(lateral.dtype)], axis=-1)
      for i, (channels, kernel) in enumerate([(wide // 2, 1), (wide, 3)] * 2 + [(wide // 2, 1)]):
        x = conv(channels, kernel, f"s{stride}_conv{i + 1}")(x, train=train)
      outputs[stride] = conv(wide, 3, f"s{stride}_out")(x, train=train)
      lateral = conv(wide // 4, 1, f"s{stride}_lateral")(x, train=train) if stride != strides[0] else None
    return outputs
