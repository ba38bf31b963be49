"""CenterNet's output heads (Zhou et al. 2019, "Objects as Points"): class heatmap, sub-cell offset, box size."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdet.models.layers import Conv

# Heatmap logits start at log(0.1 / 0.9): every cell predicts "object" with probability 0.1, as in CenterNet, so
# the focal loss of the many negative cells does not swamp the first steps.
HEATMAP_PRIOR = 0.1


class CenterNetHead(nn.Module):
  """Returns `{"heatmap": [B, h, w, C] logits, "offset": [B, h, w, 2], "size": [B, h, w, 2]}`, float32.

  Each branch is a 3x3 convolution with `head_features` channels, ReLU, and a 1x1 convolution, on the stride-R
  map. `offset` is (ox, oy) in output cells; `size` is (w, h) in input pixels (CenterNet regresses raw pixels).

  `size_scale` multiplies the size branch's output (1 in CenterNet). The loss stays the paper's L1 in pixels; the
  scale only changes how far one optimiser step moves a size: Adam's steps are about the learning rate per
  parameter, so unscaled outputs need hundreds of steps to grow from 0 to tens of pixels. Trained from scratch on
  a CPU budget, a scale of about the typical object size converges much faster (README results).
  """

  num_classes: int
  head_features: int = 64
  size_scale: float = 1.0
  dtype: Any = jnp.float32

  def _branch(self, x, out: int, name: str, bias_init=nn.initializers.zeros):
    y = nn.relu(Conv(self.head_features, (3, 3), padding=1, dtype=self.dtype, name=f"{name}_conv")(x))
    y = Conv(out, (1, 1), dtype=self.dtype, bias_init=bias_init, name=f"{name}_out")(y)
    return y.astype(jnp.float32)

  @nn.compact
  def __call__(self, x):
    prior = nn.initializers.constant(math.log(HEATMAP_PRIOR / (1 - HEATMAP_PRIOR)))
    return {"heatmap": self._branch(x, self.num_classes, "heatmap", prior),
            "offset": self._branch(x, 2, "offset"),
            "size": self._branch(x, 2, "size") * self.size_scale}
