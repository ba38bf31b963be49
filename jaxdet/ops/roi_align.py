"""RoI Align (Mask R-CNN): the average of bilinearly interpolated points on a regular grid in each RoI bin.

Reference: He et al., "Mask R-CNN", ICCV 2017. The arithmetic is torchvision's `roi_align` CPU kernel step for
step: box corners times `spatial_scale`, minus 0.5 when `aligned` (so that feature cell (i, j) sits at sample
coordinate (j, i)); bins of `roi_size / output_size` (the RoI size clamped to >= 1 when not aligned); `grid`
points per bin and axis at `start + p * bin + (k + 0.5) * bin / grid`; a point counts only inside
[-1, H] x [-1, W], is clamped into the map and interpolated bilinearly; each bin is the sum over its points
divided by their number.

Formulation. Both the point grid and bilinear interpolation are separable, so along each axis a bin reads
2 * grid rows (columns) with weights that depend on that axis only, and a bin's value is
`sum_k wy_k * wx_k * F[row_k, col_k]` over (2 grid)^2 taps. Written as an unrolled sum of gathers, XLA fuses it
into one loop over the output `[R, oh, ow, C]` that reads C contiguous values per tap (features are NHWC), and
nothing of size taps x C is stored. The gradient w.r.t. features is the transposed gather, one scatter-add of
the taps; the gradient w.r.t. the weights (and through them the box coordinates) is one more fused gather.
Separable weight matrices (`[oh * grid, H]` and `[ow * grid, W]` per RoI, two batched einsums) measured ~300x
slower on CPU: they touch every row and column of the map for every RoI.

Differences from torchvision (deliberate):
- A box with a non-finite coordinate or size, or a box index outside [0, B), gives zeros and zero gradients
  (torchvision reads out of bounds or propagates NaN). Finite degenerate boxes (zero or negative width) give
  torchvision's numbers: its sample points are well defined.
- `sampling_ratio <= 0` (adaptive: ceil(roi_size / output_size) points per bin and axis) makes the number of
  points depend on the box. It is supported with a static bound `max_sampling_ratio`: each RoI uses
  min(ceil(roi_size / output_size), max_sampling_ratio) points, the unused taps masked, so results equal
  torchvision's whenever the bound is not reached; without the bound it is a ValueError.
- The output is also differentiable w.r.t. the box coordinates (torchvision gives boxes no gradient): the
  derivative of the interpolation weights, defined almost everywhere.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

_MAX_UNROLLED_POINTS = 16  # points per bin summed in one fused pass (sampling_ratio <= 4)
_POINTS_PER_PASS = 4  # larger (adaptive) grids loop over passes of this many points, to bound compile time


def output_hw(output_size: int | Sequence[int]) -> tuple[int, int]:
  """Returns `(oh, ow)` from an int or a pair."""
  if isinstance(output_size, int):
    return output_size, output_size
  oh, ow = output_size
  return int(oh), int(ow)


def exact_divide(numerator: jax.Array, denominator) -> jax.Array:
  """Returns `numerator / denominator` rounded as IEEE division, even where the denominator is a constant.

  XLA rewrites division by a constant (and by a broadcast scalar) as multiplication by its reciprocal, which is
  an ulp away from the C++ kernels' `x / n` in about half the cases; hiding the denominator behind an
  optimization barrier keeps the true division, so sample positions and bin edges round as torchvision's do.
  """
  denominator = jnp.broadcast_to(jnp.asarray(denominator, numerator.dtype), numerator.shape)
  return numerator / lax.optimization_barrier(denominator)


def _axis_taps(start, bin_size, grid, size, *, n_bins: int, max_grid: int):
  """Returns `(index int32, weight f32)`, each `[R, n_bins, max_grid, 2]`: the (low, high) neighbours of each point.

  `start`, `bin_size`, `grid` (points used per bin, float) and `size` (the map's extent on this axis) are `[R]`.
  Weights are torchvision's (1 - frac, frac), zero for points outside [-1, size] and for points k >= grid.
  """
  k = jnp.arange(max_grid, dtype=jnp.float32)
  p = jnp.arange(n_bins, dtype=jnp.float32)[:, None]
  start, bin_size, grid, size = (v[:, None, None] for v in (start, bin_size, grid, size))
  step = exact_divide(jnp.broadcast_to((k + 0.5) * bin_size, (start.shape[0], n_bins, max_grid)), grid)
  # torchvision's order of operations; XLA may contract `start + p * bin` into one FMA, which can move a point by
  # an ulp of its coordinate (outputs then differ from torchvision's by about that ulp times the feature slope).
  y = (start + p * bin_size) + step
  use = (k < grid) & (y >= -1.0) & (y <= size)
  y = jnp.clip(y, 0.0, size)  # y <= 0 reads row 0 as in torchvision; the upper clip only touches unused points
  low = jnp.floor(y)
  top = low >= size - 1
  low = jnp.where(top, size - 1, low)
  frac = jnp.where(top, 0.0, y - low)
  index = jnp.stack([low, jnp.where(top, low, low + 1)], axis=-1).astype(jnp.int32)
  weight = jnp.stack([1.0 - frac, frac], axis=-1) * use[..., None]
  return index, weight


def _pass_sum(table, index, weight):
  """Returns `[..., C]` f32: sum over points of (w0 v0 + w1 v1 + w2 v2 + w3 v3), points in order (as torchvision)."""
  acc = None
  for s in range(index.shape[-2]):
    taps = [weight[..., s, t, None] * table[index[..., s, t]].astype(jnp.float32) for t in range(4)]
    point = ((taps[0] + taps[1]) + taps[2]) + taps[3]
    acc = point if acc is None else acc + point
  return acc


def _over_passes(fn, index, weight, init):
  """Folds `fn(acc, index_chunk, weight_chunk)` over the points axis (-2): one pass, or a loop of short ones."""
  n = index.shape[-2]
  if n <= _MAX_UNROLLED_POINTS:
    return fn(init, index, weight)
  pad = -n % _POINTS_PER_PASS
  widths = [(0, 0)] * (index.ndim - 2) + [(0, pad), (0, 0)]
  index, weight = jnp.pad(index, widths), jnp.pad(weight, widths)  # padded points have weight 0

  def body(i, acc):
    chunk = lambda a: lax.dynamic_slice_in_dim(a, i * _POINTS_PER_PASS, _POINTS_PER_PASS, axis=-2)
    return fn(acc, chunk(index), chunk(weight))

  return lax.fori_loop(0, (n + pad) // _POINTS_PER_PASS, body, init)


@jax.custom_vjp
def weighted_gather(table: jax.Array, index: jax.Array, weight: jax.Array) -> jax.Array:
  """Returns `[..., C]` f32: `sum_{s, t} weight[..., s, t] * table[index[..., s, t]]`.

  `table` `[N, C]`, `index` int32 `[..., S, 4]` (must lie in [0, N)), `weight` f32 `[..., S, 4]`. Differentiable
  w.r.t. `table` (a scatter-add of the taps) and `weight` (a gather); the sum runs in fused passes.
  """
  init = jnp.zeros(index.shape[:-2] + table.shape[-1:], jnp.float32)
  return _over_passes(lambda acc, i, w: acc + _pass_sum(table, i, w), index, weight, init)


def _tap_products(table, index, g):
  """Returns `[..., S, 4]`: `sum_c g[..., c] * table[index[..., s, t], c]`, the cotangent of each tap weight."""
  flat = index.reshape(index.shape[:-2] + (-1,))
  one = lambda i: jnp.sum(g * table[i].astype(jnp.float32), axis=-1)
  if index.shape[-2] <= _MAX_UNROLLED_POINTS:
    out = jnp.stack([one(flat[..., k]) for k in range(flat.shape[-1])], axis=-1)
  else:
    out = jnp.moveaxis(lax.map(one, jnp.moveaxis(flat, -1, 0)), 0, -1)
  return out.reshape(index.shape)


def _weighted_gather_fwd(table, index, weight):
  # With symbolic zeros each primal says whether it is perturbed: the scatter (for the features) and the gather
  # (for the weights, i.e. the boxes) are traced only when their gradient is asked for. The flags travel as the
  # (static) keys of a dict.
  wanted = {name: None for name, primal in (("table", table), ("weight", weight)) if primal.perturbed}
  table, index, weight = table.value, index.value, weight.value
  return weighted_gather(table, index, weight), (table, index, weight, wanted)


def _weighted_gather_bwd(residuals, g):
  table, index, weight, wanted = residuals
  if isinstance(g, SymbolicZero):
    return None, None, None
  g = g.astype(jnp.float32)
  d_table = d_weight = None
  if "table" in wanted:
    # One scatter-add of all taps, updates materialised first: XLA:CPU runs a scatter whose updates are fused
    # into it an order of magnitude slower. Adaptive grids scatter pass by pass to bound the memory.
    def scatter(acc, i, w):
      updates = w[..., None] * g[..., None, None, :]
      return acc.at[i.reshape(-1)].add(updates.reshape(-1, table.shape[-1]), mode="promise_in_bounds")

    d_table = _over_passes(scatter, index, weight, jnp.zeros(table.shape, jnp.float32)).astype(table.dtype)
  if "weight" in wanted:
    d_weight = _tap_products(table, index, g)
  return d_table, None, d_weight


weighted_gather.defvjp(_weighted_gather_fwd, _weighted_gather_bwd, symbolic_zeros=True)


def _prepare(boxes: jax.Array, *, scale, valid: jax.Array, output_size, sampling_ratio: int, aligned: bool,
             max_sampling_ratio: int | None):
  """Returns `(scaled [R, 4], bins [R, 2], grid [R, 2], count [R], valid [R], max_grid)`: torchvision's RoI
  geometry in feature-map units (x then y in `bins` and `grid`), invalid RoIs replaced by a finite stand-in."""
  oh, ow = output_hw(output_size)
  if sampling_ratio > 0:
    max_grid = sampling_ratio
  elif max_sampling_ratio is None or max_sampling_ratio < 1:
    raise ValueError("sampling_ratio <= 0 (adaptive, ceil(roi_size / output_size) points per bin) needs a static "
                     f"bound: pass max_sampling_ratio >= 1 (got {max_sampling_ratio!r})")
  else:
    max_grid = int(max_sampling_ratio)
  num = boxes.shape[0]
  boxes = jnp.asarray(boxes, jnp.float32)
  scale = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (num,))
  scaled = boxes * scale[:, None] - (0.5 if aligned else 0.0)
  size = scaled[:, 2:] - scaled[:, :2]
  valid = valid & jnp.all(jnp.isfinite(scaled), axis=-1) & jnp.all(jnp.isfinite(size), axis=-1)
  scaled = jnp.where(valid[:, None], scaled, 0.0)  # a finite stand-in keeps NaN out of the gradients
  size = scaled[:, 2:] - scaled[:, :2]
  if not aligned:
    size = jnp.maximum(size, 1.0)
  bins = exact_divide(size, jnp.array([ow, oh], jnp.float32))
  if sampling_ratio > 0:
    grid = jnp.full((num, 2), float(sampling_ratio), jnp.float32)
  else:
    grid = jnp.clip(jnp.ceil(bins), 0.0, float(max_grid))
  count = jnp.maximum(grid[:, 0] * grid[:, 1], 1.0)
  return scaled, bins, grid, count, valid, max_grid


def roi_align_table(table: jax.Array, boxes: jax.Array, *, base: jax.Array, height, width, scale, valid: jax.Array,
                    output_size: int | Sequence[int], sampling_ratio: int, aligned: bool,
                    max_sampling_ratio: int | None) -> jax.Array:
  """Returns `[R, oh, ow, C]` RoI Align of RoIs whose maps are row-major blocks of one flat table.

  The building block of `roi_align` and of `multilevel_roi_align` (which samples every RoI from its own FPN
  level in one concatenated table). `table` `[N, C]`; `boxes` `[R, 4]` xyxy image pixels; `base` int32 `[R]`:
  offset of the RoI's map (row 0, column 0) in the table; `height`, `width`, `scale`: that map's size and
  spatial scale (scalars or `[R]`); `valid` bool `[R]`: False gives zeros.
  """
  oh, ow = output_hw(output_size)
  num = boxes.shape[0]
  scaled, bins, grid, count, valid, max_grid = _prepare(
      boxes, scale=scale, valid=valid, output_size=output_size, sampling_ratio=sampling_ratio, aligned=aligned,
      max_sampling_ratio=max_sampling_ratio)
  as_rois = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (num,))  # noqa: E731
  height, width = as_rois(height), as_rois(width)
  rows, wy = _axis_taps(scaled[:, 1], bins[:, 1], grid[:, 1], height, n_bins=oh, max_grid=max_grid)
  cols, wx = _axis_taps(scaled[:, 0], bins[:, 0], grid[:, 0], width, n_bins=ow, max_grid=max_grid)
  wy = wy * valid[:, None, None, None]
  # Taps [R, oh, ow, gy, gx, (y_low x_low, y_low x_high, y_high x_low, y_high x_high)], torchvision's order.
  row_ix = rows[:, :, None, :, None, :, None] * width.astype(jnp.int32)[:, None, None, None, None, None, None]
  index = base[:, None, None, None, None, None, None] + row_ix + cols[:, None, :, None, :, None, :]
  weight = wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]
  tap_shape = (num, oh, ow, max_grid * max_grid, 4)
  out = weighted_gather(table, index.reshape(tap_shape), weight.reshape(tap_shape))
  return (out / count[:, None, None, None]).astype(table.dtype)


def _axis_matrix(start, bin_size, grid, size, *, n_bins: int, max_grid: int, length: int) -> jax.Array:
  """Returns `[R, n_bins, length]`: each bin's summed interpolation weight on each column of a `length`-wide row
  (columns at or beyond the RoI's own map `size [R]` get 0)."""
  index, weight = _axis_taps(start, bin_size, grid, size, n_bins=n_bins, max_grid=max_grid)
  onehot = index[..., None] == jnp.arange(length, dtype=jnp.int32)
  return jnp.sum(jnp.where(onehot, weight[..., None], 0.0), axis=(2, 3))


def roi_align_rows(rows: jax.Array, boxes: jax.Array, *, row_base: jax.Array, height, width, scale,
                   valid: jax.Array, output_size: int | Sequence[int], sampling_ratio: int, aligned: bool,
                   max_sampling_ratio: int | None) -> jax.Array:
  """Returns `[R, oh, ow, C]` RoI Align computed row first: the "rows" formulation of `roi_align`.

  `rows [N, Wmax, C]` holds every map row (of every image and level), zero-padded to the widest map; a RoI's map
  starts at row `row_base [R]` and has `height`, `width` (scalars or `[R]`, width <= Wmax) and `scale`.
  Interpolation is separable: each output row p of a RoI is first a weighted sum of at most 2 x grid whole map
  rows (one gather of contiguous `Wmax x C` blocks), then each bin is that row times the bin's column weights (a
  batched matrix product over Wmax). The gradient w.r.t. the maps is then a scatter-add of `R x oh x 2 grid` long
  rows plus matrix products, where the tap formulation scatters `R x oh x ow x (2 grid)^2` short ones; XLA:CPU's
  scatter costs per row, so on small maps with many RoIs (two-stage training) this is several times faster
  forward + backward (experiments/bench/roi.py), while its forward costs about Wmax / (2 grid) times more reads.
  """
  oh, ow = output_hw(output_size)
  num, max_width, channels = boxes.shape[0], rows.shape[1], rows.shape[2]
  scaled, bins, grid, count, valid, max_grid = _prepare(
      boxes, scale=scale, valid=valid, output_size=output_size, sampling_ratio=sampling_ratio, aligned=aligned,
      max_sampling_ratio=max_sampling_ratio)
  as_rois = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (num,))  # noqa: E731
  height, width = as_rois(height), as_rois(width)
  row_index, wy = _axis_taps(scaled[:, 1], bins[:, 1], grid[:, 1], height, n_bins=oh, max_grid=max_grid)
  wy = wy * jnp.where(valid, 1.0 / count, 0.0)[:, None, None, None]
  taps = 2 * max_grid
  pad = -taps % 4  # weighted_gather sums taps in groups of four
  row_index = jnp.pad((row_index + row_base[:, None, None, None]).reshape(num, oh, taps), ((0, 0), (0, 0), (0, pad)))
  wy = jnp.pad(wy.reshape(num, oh, taps), ((0, 0), (0, 0), (0, pad)))
  groups = (taps + pad) // 4
  mixed = weighted_gather(rows.reshape(rows.shape[0], max_width * channels),
                          row_index.reshape(num, oh, groups, 4), wy.reshape(num, oh, groups, 4))
  wx = _axis_matrix(scaled[:, 0], bins[:, 0], grid[:, 0], width, n_bins=ow, max_grid=max_grid, length=max_width)
  out = jnp.einsum("rqw,rpwc->rpqc", wx, mixed.reshape(num, oh, max_width, channels))
  return out.astype(rows.dtype)


def roi_align(features: jax.Array, boxes: jax.Array, box_indices: jax.Array, *, output_size: int | Sequence[int],
              spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True,
              max_sampling_ratio: int | None = None, method: str = "taps") -> jax.Array:
  """Returns `[R, oh, ow, C]` RoI Align features (Mask R-CNN), the numbers of torchvision's `roi_align`.

  Args:
    features: `[B, H, W, C]` feature maps (NHWC; any float dtype, the output has the same).
    boxes: `[R, 4]` xyxy boxes in image pixels; `boxes * spatial_scale` are feature-map units.
    box_indices: int `[R]`, the image of each box in [0, B).
    output_size: `oh` (= `ow`) or `(oh, ow)` bins.
    spatial_scale: feature cells per image pixel (1 / stride).
    sampling_ratio: points per bin and axis; <= 0 is torchvision's adaptive ceil(roi_size / output_size), which
      needs `max_sampling_ratio` (a static bound; RoIs that would need more use the bound).
    aligned: shift boxes by -0.5 cell so that cell (i, j) is centred at (j + 0.5, i + 0.5) (Detectron2's
      ROIAlignV2); False is the original Mask R-CNN op, which also clamps RoI sizes to >= 1 cell.
    max_sampling_ratio: static bound on the adaptive grid; unused when sampling_ratio > 0.
    method: "taps" gathers the (2 grid)^2 taps of every bin (fastest forward, few RoIs on large maps); "rows"
      interpolates whole rows first (`roi_align_rows`: much faster gradients for many RoIs on small maps). The
      two agree to float rounding.

  Invalid boxes (non-finite coordinates or size) and indices outside [0, B) give zeros with zero gradients.
  Differentiable w.r.t. `features` and (almost everywhere) `boxes`; jittable and vmappable.
  """
  features = jnp.asarray(features)
  n, h, w, c = features.shape
  box_indices = jnp.asarray(box_indices, jnp.int32)
  in_range = (box_indices >= 0) & (box_indices < n)
  image = jnp.clip(box_indices, 0, n - 1)
  if method == "rows":
    return roi_align_rows(features.reshape(n * h, w, c), boxes, row_base=image * h, height=h, width=w,
                          scale=spatial_scale, valid=in_range, output_size=output_size, sampling_ratio=sampling_ratio,
                          aligned=aligned, max_sampling_ratio=max_sampling_ratio)
  if method != "taps":
    raise ValueError(f"roi_align method must be taps or rows, got {method!r}")
  base = image * (h * w)
  return roi_align_table(features.reshape(n * h * w, c), boxes, base=base, height=h, width=w,
                         scale=spatial_scale, valid=in_range, output_size=output_size,
                         sampling_ratio=sampling_ratio, aligned=aligned, max_sampling_ratio=max_sampling_ratio)
