"""Feature Pyramid Network (Lin et al. 2017): a top-down path with lateral connections over a backbone's stages.

Each backbone map C_l (stride 2^l) gets a 1x1 lateral convolution to `features` channels; from the coarsest level
down, the running map is upsampled 2x (nearest neighbour) and added to the next lateral; a 3x3 convolution on each
merged map gives P_l (course G3, "FPN"). Levels above the backbone's last come from `extra`:
- "maxpool": P_{l+1} = P_l subsampled by 2 (a 1x1 max pool of stride 2), as FPN's RPN / Faster R-CNN take P6
  (detectron2's `LastLevelMaxPool`).
- "conv_c5" / "conv_p5": a 3x3 stride-2 convolution on C5 (RetinaNet's paper) or on P5 (FCOS, detectron2's
  RetinaNet default) for the first extra level, then ReLU and another 3x3 stride-2 convolution for each next one
  (RetinaNet's P6 and P7).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import Conv

EXTRA_KINDS = ("maxpool", "conv_c5", "conv_p5")


def upsample_nearest(x: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Returns `x [B, h, w, C]` upsampled by nearest neighbour to `shape` (H, W), H >= h, W >= w.

  An exact 2x upsample (each cell repeated) when H = 2h and W = 2w, which is the FPN case for input sides that
  are multiples of the coarsest stride; other sizes take the nearest source cell of each output cell centre.
  """
  b, h, w, c = x.shape
  height, width = shape
  if (height, width) == (2 * h, 2 * w):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return jax.image.resize(x, (b, height, width, c), method="nearest")


class FPN(nn.Module):
  """Returns the pyramid `[P_min_level, ..., P_max_level]`, each `[B, H / 2^l, W / 2^l, features]`.

  Attributes:
    features: channels of every pyramid level (256 in the paper).
    min_level, max_level: the levels returned (Faster R-CNN + FPN: 2..6; RetinaNet and FCOS: 3..7).
    first_backbone_level: the level of the first backbone map passed in (ResNet's stage outputs: C2, level 2).
    extra: how levels above the last backbone map are made: "maxpool", "conv_c5" or "conv_p5" (module docstring).

  Call with the backbone's maps, finest first, at consecutive levels from `first_backbone_level`; the laterals use
  the maps of levels min_level..min(max_level, last backbone level).
  """

  features: int = 256
  min_level: int = 2
  max_level: int = 6
  first_backbone_level: int = 2
  extra: str = "maxpool"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, backbone_maps: Sequence[jax.Array]) -> list[jax.Array]:
    if self.extra not in EXTRA_KINDS:
      raise ValueError(f"FPN extra must be one of {EXTRA_KINDS}, got {self.extra!r}")
    last_backbone_level = self.first_backbone_level + len(backbone_maps) - 1
    if not self.first_backbone_level <= self.min_level <= min(self.max_level, last_backbone_level):
      raise ValueError(f"FPN levels {self.min_level}..{self.max_level} need backbone maps from level "
                       f"{self.min_level}; got levels {self.first_backbone_level}..{last_backbone_level}")
    top = min(self.max_level, last_backbone_level)
    conv = lambda k, s, name: Conv(self.features, (k, k), strides=s, padding=k // 2, dtype=self.dtype,  # noqa: E731
                                   name=name)
    merged = None
    outputs = {}
    for level in range(top, self.min_level - 1, -1):
      lateral = conv(1, 1, f"lateral{level}")(backbone_maps[level - self.first_backbone_level])
      merged = lateral if merged is None else lateral + upsample_nearest(merged, lateral.shape[1:3])
      outputs[level] = conv(3, 1, f"output{level}")(merged)
    x = backbone_maps[top - self.first_backbone_level] if self.extra == "conv_c5" else outputs[top]
    for level in range(top + 1, self.max_level + 1):
      if self.extra == "maxpool":
        x = x[:, ::2, ::2, :]  # a 1x1 max pool of stride 2 is a subsample
      else:
        x = conv(3, 2, f"extra{level}")(x if level == top + 1 else nn.relu(x))
      outputs[level] = x
    return [outputs[level] for level in range(self.min_level, self.max_level + 1)]
