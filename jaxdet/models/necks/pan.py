"""YOLOv4's neck (Bochkovskiy et al. 2020, sec. 3.4; darknet `yolov4.cfg`): SPP on the coarsest map, a top-down path
as YOLOv3's, then PANet's bottom-up path (Liu et al. 2018), every join a concatenation (YOLOv4's "modified PAN";
PANet adds).

With the paper's channels at `width` 32 (c = 32 x width = 1024 at stride 32):
- stride 32: 1x1 c/2, 3x3 c, 1x1 c/2, SPP (`spp`), 1x1 c/2, 3x3 c, 1x1 c/2 -> P5;
- top-down, at strides 16 then 8: the backbone map 1x1-reduced and the coarser result 1x1-reduced and upsampled 2x,
  concatenated (backbone first, darknet's `route layers = -1, -3`), five convolutions (1x1, 3x3, 1x1, 3x3, 1x1;
  half the channels of the scale above) -> N4, N3;
- bottom-up, at strides 16 then 32: the finer result through a strided 3x3 convolution, concatenated with N4 (P5),
  five convolutions -> M4, M5;
- each scale's detection features: a 3x3 convolution of N3, M4, M5 (c/4, c/2, c channels).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.backbones.darknet import ConvBNLeaky
from jaxdet.models.necks.spp import SPP
from jaxdet.models.necks.yolov3 import upsample_nearest


class YOLOv4Neck(nn.Module):
  """Returns `{8: [B, H / 8, W / 8, 8 width], 16: [..., 16 width], 32: [..., 32 width]}`: YOLOv4's detection
  features (module docstring) from the backbone's `{stride: map}` at strides 8, 16 and 32 (`CSPDarknet53`).

  Attributes:
    width: the backbone's stem channels (32 in the paper); the neck's channels scale with it.
    spp: the SPP block on the coarsest map (the paper); off for the ablation.
  """

  width: int = 32
  spp: bool = True
  cmbn: int = 1  # CmBN mini-batches (jaxdet.models.cmbn); 1: plain batch norm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[int, jax.Array], *, train: bool) -> dict[int, jax.Array]:
    missing = [s for s in (8, 16, 32) if s not in features]
    if missing:
      raise ValueError(f"the backbone has no map at strides {missing} (it has {sorted(features)})")
    conv = lambda c, k, name, s=1: ConvBNLeaky(max(1, c), k, strides=s, cmbn=self.cmbn, dtype=self.dtype,  # noqa: E731
                                               name=name)

    def five(x, c, prefix):  # 1x1 c, 3x3 2c, 1x1 c, 3x3 2c, 1x1 c
      for i, (channels, kernel) in enumerate([(c, 1), (2 * c, 3)] * 2 + [(c, 1)]):
        x = conv(channels, kernel, f"{prefix}_conv{i + 1}")(x, train=train)
      return x

    c = 32 * self.width
    x = features[32]
    for i, (channels, kernel) in enumerate([(c // 2, 1), (c, 3), (c // 2, 1)]):
      x = conv(channels, kernel, f"p5_pre{i + 1}")(x, train=train)
    if self.spp:
      x = SPP(name="spp")(x)
    for i, (channels, kernel) in enumerate([(c // 2, 1), (c, 3), (c // 2, 1)]):
      x = conv(channels, kernel, f"p5_post{i + 1}")(x, train=train)
    top = {32: x}
    for stride, channels in ((16, c // 4), (8, c // 8)):
      lateral = conv(channels, 1, f"n{stride}_lateral")(features[stride], train=train)
      coarse = upsample_nearest(conv(channels, 1, f"n{stride}_reduce")(top[2 * stride], train=train))
      top[stride] = five(jnp.concatenate([lateral, coarse.astype(lateral.dtype)], axis=-1), channels, f"n{stride}")
    bottom = {8: top[8]}
    for stride, channels in ((16, c // 4), (32, c // 2)):
      down = conv(channels, 3, f"m{stride}_down", 2)(bottom[stride // 2], train=train)
      bottom[stride] = five(jnp.concatenate([down, top[stride]], axis=-1), channels, f"m{stride}")
    return {s: conv(c // 2 ** (5 - k), 3, f"out{s}")(bottom[s], train=train) for k, s in ((3, 8), (4, 16), (5, 32))}
