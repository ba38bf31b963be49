"""The "ResNet + transposed convolutions" neck of Simple Baselines (Xiao et al. 2018), used by CenterNet.

Each step is a 3x3 convolution (CenterNet puts a deformable one here; this is the plain-convolution variant) that
sets the channels, then a 4x4 stride-2 transposed convolution that doubles the resolution, each followed by batch
norm and ReLU. Three steps take a stride-32 map to stride 4.

With `skip_connections`, each upsampled map is added to a 1x1 projection (with batch norm) of the backbone map of
the same stride, as U-Net / FPN lateral connections and CenterNet's DLA-34 "IDA-up" do: the stride-4 output then
sees the high-resolution early features directly, which small objects need and which makes training from scratch
converge much faster (measured on `shapes`, see the README's results).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.models.layers import Conv, ConvTranspose


def bilinear_upsampling_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """Returns a `[k, k, C, C]` transposed-convolution kernel that upsamples each channel bilinearly on its own.

  The transposed convolutions start as plain 2x bilinear upsampling, as in Simple Baselines / CenterNet's
  `fill_up_weights`. That code copies the bilinear filter into `weight[c, 0]`, routing every input channel to
  output channel 0; here channel c goes to channel c (the identity the filter is meant to be).
  """
  del key
  k, k2, c_in, c_out = shape
  if k != k2 or c_in != c_out:
    raise ValueError(f"bilinear upsampling needs a square kernel and as many outputs as inputs, got {shape}")
  f = (k + 1) // 2
  center = f - 1 if k % 2 == 1 else f - 0.5
  taps = 1 - np.abs(np.arange(k) - center) / f
  kernel = np.zeros(shape, np.float32)
  kernel[:, :, np.arange(c_in), np.arange(c_in)] = np.outer(taps, taps)[:, :, None]
  return jnp.asarray(kernel, dtype)


class DeconvNeck(nn.Module):
  """Returns `[B, 8h, 8w, features[-1]]` from the backbone maps, the last of which is `[B, h, w, C]` (3 steps).

  Attributes:
    features: output channels of each upsampling step (CenterNet: 256, 128, 64).
    skip_connections: add projected backbone maps of the same stride after each upsampling step (needs the
      backbone's earlier maps: `backbone_maps[-2 - i]` must have twice the resolution of step i's input).
  """

  features: Sequence[int] = (256, 128, 64)
  skip_connections: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, backbone_maps: Sequence[jnp.ndarray], *, train: bool):
    x = backbone_maps[-1]
    for i, f in enumerate(self.features):
      x = Conv(f, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=f"bn{i + 1}a")(x))
      x = ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME", use_bias=False, dtype=self.dtype,
                        kernel_init=bilinear_upsampling_init, name=f"up{i + 1}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=f"bn{i + 1}b")(x)
      if self.skip_connections:
        lateral = Conv(f, (1, 1), use_bias=False, dtype=self.dtype, name=f"lateral{i + 1}")(backbone_maps[-2 - i])
        x = x + nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                             name=f"lateral{i + 1}_bn")(lateral)
      x = nn.relu(x)
    return x
