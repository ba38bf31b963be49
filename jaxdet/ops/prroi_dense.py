"""Precise RoI Pooling of many RoIs of one image on small maps: the dense separable formulation, one FPN level per
RoI.

`prroi_pool` (the run formulation) costs 9 (P + 1)(Q + 1) double-float table lookups per RoI, whatever the map,
and its gradients scatter into the prefix table: right for few RoIs on large maps, slow for the hundreds of RoIs
per image that training a two-stage head on 8-32 cell maps needs (about 2.5 s forward + backward for 1,024 RoIs
on four FPN levels of 64 channels, on a 2-core CPU). Here each bin's integral is written as the separable sum it
is, integral_bin f = sum_ij F[i, j] Wy[p, i] Wx[q, j], with the dense weights Wy `[P, H]` and Wx `[Q, W]` (each
cell's integral of its hat over the bin, computed in closed form per linear piece so that nothing cancels), and
the pooling is two batched matrix products, `Wy F` then `(Wy F) Wx^T`: S P W C (H + Q) multiply-adds for S RoIs,
and gradients w.r.t. the features and the box coordinates by plain autodiff through the products and the weights
(the weights are piecewise polynomials of the bin edges, differentiable wherever the integral is). The numbers are
`prroi_pool`'s to float32 rounding (tests/ops/test_prroi_dense.py).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdet.ops.prroi_pool import MIN_BIN_SIZE, _cell_integral
from jaxdet.ops.roi_align import output_hw
from jaxdet.ops.roi_levels import _levels_of, fpn_levels


def _axis_weights(start: jax.Array, stop: jax.Array, n_bins: int, length: int) -> tuple[jax.Array, jax.Array]:
  """Returns `(weights [S, n_bins, length], widths [S, n_bins])`: each cell's hat integrated over each bin."""
  step = (stop - start) / n_bins
  edges = start[:, None] + jnp.arange(n_bins + 1, dtype=jnp.float32) * step[:, None]  # [S, n + 1]
  cells = jnp.arange(length, dtype=jnp.float32)
  weights = _cell_integral(edges[:, :-1, None], edges[:, 1:, None], cells)
  return weights, edges[:, 1:] - edges[:, :-1]


def prroi_pool_image(features: jax.Array, boxes: jax.Array, *, output_size: int | Sequence[int],
                     spatial_scale: float = 1.0, valid: jax.Array | None = None) -> jax.Array:
  """Returns `[S, oh, ow, C]` Precise RoI Pooling of the boxes of one image (the numbers of `prroi_pool`).

  Args:
    features: `[H, W, C]` one image's feature map (any float dtype, computed in float32, returned as given).
    boxes: `[S, 4]` xyxy image pixels; feature coordinates are `boxes * spatial_scale - 0.5`.
    output_size: `oh` (= `ow`) or `(oh, ow)` bins.
    spatial_scale: feature cells per image pixel (1 / stride).
    valid: optional bool `[S]`; invalid boxes give zeros and zero gradients.

  Differentiable w.r.t. `features` and `boxes` (exactly, wherever the integral is); vmap over images. Degenerate
  boxes (non-finite, bins under `MIN_BIN_SIZE` cells) give zeros with zero gradients, as `prroi_pool`.
  Cost: S oh W C (H + ow) multiply-adds, memory S oh W C: for small maps (choose `prroi_pool` for large ones).
  """
  oh, ow = output_hw(output_size)
  height, width, _ = features.shape
  boxes = jnp.asarray(boxes, jnp.float32)
  scaled = boxes * jnp.float32(spatial_scale) - 0.5
  bins = (scaled[:, 2:] - scaled[:, :2]) / jnp.array([ow, oh], jnp.float32)
  ok = (jnp.all(jnp.isfinite(scaled), axis=-1) & jnp.all(jnp.isfinite(bins), axis=-1)
        & jnp.all(bins >= MIN_BIN_SIZE, axis=-1))
  if valid is not None:
    ok &= jnp.asarray(valid, bool)
  scaled = jnp.where(ok[:, None], scaled, jnp.array([0.0, 0.0, ow, oh], jnp.float32))  # finite stand-in
  wy, hy = _axis_weights(scaled[:, 1], scaled[:, 3], oh, height)
  wx, hx = _axis_weights(scaled[:, 0], scaled[:, 2], ow, width)
  area = hy[:, :, None] * hx[:, None, :]
  usable = ok[:, None, None] & (area > 0.0)
  inv_area = jnp.where(usable, 1.0 / jnp.where(usable, area, 1.0), 0.0)
  hi = jax.lax.Precision.HIGHEST
  rows = jnp.einsum("sph,hwc->spwc", wy, features.astype(jnp.float32), precision=hi)
  out = jnp.einsum("sqw,spwc->spqc", wx, rows, precision=hi) * inv_area[..., None]
  return out.astype(features.dtype)


def multilevel_prroi_pool(features_by_level: Sequence[jax.Array], boxes: jax.Array, *,
                          output_size: int | Sequence[int], strides: Sequence[int], k0: int = 4,
                          canonical_size: float = 224, valid: jax.Array | None = None) -> jax.Array:
  """Returns `[S, oh, ow, C]`: Precise RoI Pooling of each box of one image on its FPN level (`fpn_levels`).

  Args:
    features_by_level: `[H_l, W_l, C]` maps of one image, finest first, with strides `strides` (consecutive
      powers of two: strides 4..32 are levels 2..5).
    boxes: `[S, 4]` xyxy image pixels. valid: optional bool `[S]`.
    output_size: bins; k0, canonical_size: the level formula's constants (FPN: 4, 224).

  Equal to `prroi_pool(features_by_level[l], ...)` with `spatial_scale = 1 / strides[l]`, l = the box's level.
  Every level runs on every box with the other levels' boxes masked (the finest map dominates the cost, so this
  is about 4/3 of pooling everything on the finest level). The level is a step function of the box: the gradient
  w.r.t. the box is the gradient on its level.
  """
  min_level, max_level = _levels_of(strides)
  if len(features_by_level) != len(strides):
    raise ValueError(f"{len(features_by_level)} feature maps for {len(strides)} strides")
  level = fpn_levels(boxes, k0=k0, canonical_size=canonical_size, min_level=min_level, max_level=max_level)
  ok = jnp.ones(level.shape, bool) if valid is None else jnp.asarray(valid, bool)
  out = None
  for offset, (features, stride) in enumerate(zip(features_by_level, strides)):
    pooled = prroi_pool_image(features, boxes, output_size=output_size, spatial_scale=1.0 / stride,
                              valid=ok & (level == min_level + offset))
    out = pooled if out is None else out + pooled
  return out
