"""The "ResNet + transposed convolutions" neck of Simple Baselines (Xiao et al. 2018), used by CenterNet.

Each step is a 3x3 convolution (CenterNet puts a deformable one here; this is the plain-convolution variant) that
sets the channels, then a 4x4 stride-2 transposed convolution that doubles the resolution, each followed by batch
norm and ReLU. Three steps take a stride-32 map to stride 4.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class DeconvNeck(nn.Module):
  """Returns `[B, 8h, 8w, features[-1]]` from the last backbone map `[B, h, w, C]` (for 3 steps).

  Attributes:
    features: output channels of each upsampling step (CenterNet: 256, 128, 64).
  """

  features: Sequence[int] = (256, 128, 64)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    for i, f in enumerate(self.features):
      x = nn.Conv(f, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=f"bn{i + 1}a")(x))
      x = nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME", use_bias=False, dtype=self.dtype,
                           name=f"up{i + 1}")(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=f"bn{i + 1}b")(x))
    return x
