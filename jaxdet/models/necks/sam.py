"""YOLOv4's modified spatial attention module (Bochkovskiy et al. 2020, sec. 3.4 and Figure 5; darknet's `sam`
layer after a logistic convolution).

CBAM's SAM (Woo et al. 2018) pools the map over channels (max and average), convolves the two planes and multiplies
every channel by one sigmoid plane: spatial-wise attention. YOLOv4 drops the pooling: a convolution of the map to
its own channels, sigmoid, multiplied elementwise -- one attention weight per cell and channel (point-wise).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.cmbn import batch_norm
from jaxdet.models.layers import Conv


class PointwiseAttention(nn.Module):
  """Returns `x * sigmoid(bn(conv(x)))` for `x [B, H, W, C]`: YOLOv4's modified SAM (module docstring).

  Attributes:
    kernel_size: the attention convolution's (1 in darknet's yolov4 SAM configs).
    batch_norm: batch norm after the convolution (darknet's configs; its offset replaces the bias).
  """

  kernel_size: int = 1
  batch_norm: bool = True
  cmbn: int = 1  # CmBN mini-batches (jaxdet.models.cmbn); 1: plain batch norm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    k = self.kernel_size
    a = Conv(x.shape[-1], (k, k), padding=k // 2, use_bias=not self.batch_norm, dtype=self.dtype, name="conv")(x)
    if self.batch_norm:
      a = batch_norm(self.cmbn, train=train, dtype=self.dtype)(a)
    return x * jax.nn.sigmoid(a).astype(x.dtype)
