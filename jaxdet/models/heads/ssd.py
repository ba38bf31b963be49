"""SSD's detection heads (Liu et al. 2016, sec. 2.1): one 3x3 convolution per source map for the class scores and one
for the box offsets of that map's priors."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import Conv


class SSDHead(nn.Module):
  """Returns `{"logits": [B, P, num_classes + 1], "deltas": [B, P, 4]}`, float32, over the priors of all maps.

  Map k (`[B, n_k, n_k, C_k]`) gets a 3x3 convolution to `A_k (num_classes + 1)` class logits (column 0 is
  background) and one to `A_k * 4` offsets, where `A_k = priors_per_cell[k]`. Priors are ordered as
  `jaxdet.ops.ssd_priors` orders them: maps in order, cells row-major, the A_k priors of a cell innermost. Weights
  start Xavier-uniform with zero biases, as the paper's Caffe model and torchvision's `SSDHead`.
  """

  num_classes: int
  priors_per_cell: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, sources: Sequence[jax.Array]) -> dict[str, jax.Array]:
    if len(sources) != len(self.priors_per_cell):
      raise ValueError(f"{len(sources)} source maps but priors_per_cell has {len(self.priors_per_cell)} entries")
    init = nn.initializers.xavier_uniform()
    logits, deltas = [], []
    for k, (x, a) in enumerate(zip(sources, self.priors_per_cell)):
      b = x.shape[0]
      c = Conv(a * (self.num_classes + 1), (3, 3), padding=1, kernel_init=init, dtype=self.dtype,
               name=f"cls{k}")(x)
      d = Conv(a * 4, (3, 3), padding=1, kernel_init=init, dtype=self.dtype, name=f"box{k}")(x)
      logits.append(c.astype(jnp.float32).reshape(b, -1, self.num_classes + 1))
      deltas.append(d.astype(jnp.float32).reshape(b, -1, 4))
    return {"logits": jnp.concatenate(logits, axis=1), "deltas": jnp.concatenate(deltas, axis=1)}
