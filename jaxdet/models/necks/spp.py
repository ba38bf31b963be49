"""YOLOv4's spatial pyramid pooling block (Bochkovskiy et al. 2020, sec. 3.4; He et al. 2015 "SPP-net" adapted to
dense prediction, darknet `yolov3-spp.cfg` / `yolov4.cfg`): max pools of several sizes at stride 1, concatenated.

SPP-net pools a map into fixed bins to feed a classifier; YOLO keeps the map's size instead (stride 1, 'same'
padding by -inf, so border cells take the maximum over the cells that exist) and concatenates the pooled maps with
the input, which widens the receptive field of the coarsest scale at little cost.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import max_pool


def max_pool_same(x: jax.Array, size: int) -> jax.Array:
  """Returns `[B, H, W, C]`: the maximum of each cell's `size x size` neighbourhood (odd `size`, stride 1; cells
  outside the map do not count, darknet's maxpool with padding size - 1)."""
  if size % 2 != 1:
    raise ValueError(f"max_pool_same needs an odd size, got {size}")
  return max_pool(x, (size, size), strides=(1, 1), padding="SAME")


class SPP(nn.Module):
  """Returns `[B, H, W, (len(sizes) + 1) C]`: `concat([pool_k(x) for k in reversed(sizes)] + [x])` for
  `x [B, H, W, C]`, the largest pool first (darknet's `route layers = -1, -3, -5, -6`: 13, 9, 5, input)."""

  sizes: Sequence[int] = (5, 9, 13)

  @nn.compact
  def __call__(self, x):
    pooled = [max_pool_same(x, k) for k in sorted(self.sizes, reverse=True)]
    return jnp.concatenate([*pooled, x], axis=-1)
