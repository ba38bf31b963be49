"""Precise RoI Pooling (IoU-Net): the exact mean of the bilinearly interpolated feature surface over each bin.

Reference: Jiang et al., "Acquisition of Localization Confidence for Accurate Object Detection", ECCV 2018. The
surface is f(x, y) = sum_ij F[i, j] hat(x - j) hat(y - i), hat(t) = max(0, 1 - |t|), with F = 0 outside the map;
box corners in feature units are `corner * spatial_scale - 0.5`, so cell (i, j) is centred at image-scaled
(j + 0.5, i + 0.5), the convention of `roi_align(aligned=True)`. Each bin gives (1 / area) * integral of f over
it: no sampling, no quantisation, and a gradient w.r.t. the box coordinates as well as the features (for one
bin, dPr/dx1 = Pr / (x2 - x1) - integral of f(x1, y) dy / ((x2 - x1)(y2 - y1)), the course's formula).

Formulation. The integral is separable: integral_bin f = sum_ij F[i, j] Iy_i Ix_j, with
Ix_j = G(xb - j) - G(xa - j) over the bin [xa, xb] and G the antiderivative of the hat. For an edge x with
jx = floor(x), f = x - jx, A = 1 - (1 - f)^2 / 2 and B = f^2 / 2, the vector G(x - j) equals
[j < jx + 2] - (1 - A)[j = jx] - (1 - B)[j = jx + 1], so each bin's weights along an axis are five runs of
cells, each with one weight, and each run's ends depend on a single bin edge:
  [ja, ja+1): 1 - A(fa)   [ja+1, ja+2): 1 - B(fa)   [ja+2, jb): 1   [jb, jb+1): A(fb)   [jb+1, jb+2): B(fb)
(the middle run is signed: it counts negatively when jb < ja + 2). A bin is then 25 rectangle sums times
products of run weights. Consecutive bins share edges, so a RoI needs the rectangle sums between the 3(P+1) x
3(Q+1) run boundaries only, read from a 2-D prefix-sum table: 9 (P+1)(Q+1) lookups per RoI, whatever its size,
with static shapes and no loop. The table holds each prefix sum as an unevaluated float32 pair (hi + lo,
error-free "double-float" additions), and rectangle sums are formed in that arithmetic before rounding: a plain
float32 table would lose about ulp(sum of the whole map) ~ 1e-3 of every bin on a 64 x 64 map.

The run weights are applied as dense `[P, 3P + 2]` matrices (five non-zeros a row), i.e. batched matmuls. The
gradient w.r.t. features is the transpose: the cotangent spread onto the boundary grid, scattered into the
table and summed back by suffix sums (float32). W.r.t. boxes, the run weights' cotangents (contractions with
partial sums kept from the forward pass) are chained by autodiff through the weights and the bin areas; this is
the exact derivative wherever the integral is differentiable (everywhere for positive-size bins: f is
continuous).

Thin bins (under two cells) take their few cell weights as direct integrals rather than differences, so the
integral keeps float32 precision however thin the bin; what remains is the rounding of the float32 edges
themselves (ulp(x) / width, relative), and the mean is taken over the bin those edges delimit.

Degenerate inputs: boxes with a non-finite coordinate, an index outside [0, B), or bins narrower than
`MIN_BIN_SIZE` feature cells give zeros and zero gradients (the original CUDA op returns 0 for empty bins).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxdet.ops.roi_align import output_hw

MIN_BIN_SIZE = 1e-4  # feature cells; thinner bins are degenerate (their float32 edges are ~1e-3 wrong at x ~ 64)


def _two_sum(a, b):
  """Returns `(s, e)` with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum)."""
  s = a + b
  v = s - a
  return s, (a - (s - v)) + (b - v)


def _df_add(x, y):
  """Double-float addition of `(hi, lo)` pairs."""
  s, e = _two_sum(x[0], y[0])
  e = e + (x[1] + y[1])
  hi = s + e
  return hi, e - (hi - s)


def _df_diff(x, axis: int):
  """Double-float differences of consecutive entries along `axis` (entry k+1 minus entry k)."""
  hi, lo = x
  take = lambda a, start, stop: lax.slice_in_dim(a, start, stop, axis=axis)
  n = hi.shape[axis]
  return _df_add((take(hi, 1, n), take(lo, 1, n)), (-take(hi, 0, n - 1), -take(lo, 0, n - 1)))


def _df_cumsum(pair, axis: int):
  """Returns the inclusive cumulative sum of a double-float `(hi, lo)` along `axis`.

  A sequential scan, one slice at a time, rather than `associative_scan`: the same sums, a far smaller program
  to compile, and each step is a long vector anyway.
  """

  def step(carry, row):
    carry = _df_add(carry, row)
    return carry, carry

  hi, lo = (jnp.moveaxis(a, axis, 0) for a in pair)
  zero = jnp.zeros_like(hi[0])
  _, (hi, lo) = lax.scan(step, (zero, zero), (hi, lo))
  return jnp.moveaxis(hi, 0, axis), jnp.moveaxis(lo, 0, axis)


def _prefix_table(features: jax.Array):
  """Returns `(hi, lo)` `[B * (H + 1) * (W + 1), C]`: P[b, i, j] = sum of F[b, :i, :j], as double-floats."""
  padded = jnp.pad(features.astype(jnp.float32), ((0, 0), (1, 0), (1, 0), (0, 0)))
  hi, lo = _df_cumsum(_df_cumsum((padded, jnp.zeros_like(padded)), axis=1), axis=2)
  return hi.reshape(-1, hi.shape[-1]), lo.reshape(-1, lo.shape[-1])


def _grid_index(base, rows, cols, height, width):
  """Flat table index `[R, nr, nc]` of the boundary grid, boundaries clipped to the map (F = 0 outside)."""
  rows = jnp.clip(rows, 0, height)
  cols = jnp.clip(cols, 0, width)
  return base[:, None, None] + rows[:, :, None] * (width + 1) + cols[:, None, :]


def run_sums(features: jax.Array, base: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """Returns `[R, nr - 1, nc - 1, C]` f32: sums of F over [rows[k], rows[k+1]) x [cols[l], cols[l+1]) per RoI.

  `features` `[B, H, W, C]`; `base` int32 `[R]`: `b * (H + 1) * (W + 1)` for the RoI's image; `rows` `[R, nr]`
  and `cols` `[R, nc]` int32 boundaries, any integers (a reversed pair gives minus the sum; cells outside the map
  count as 0). Exact to float32 rounding of each result, via the double-float prefix table. Not differentiated
  directly: `_pool_runs` carries the gradient of the whole pooling stage.
  """
  _, height, width, _ = features.shape
  hi, lo = _prefix_table(features)
  index = _grid_index(base, rows, cols, height, width)
  grid = (hi[index], lo[index])
  hi, lo = _df_diff(_df_diff(grid, axis=1), axis=2)
  return hi + lo


def _transpose_run_sums(g_grid, base, rows, cols, features):
  """Returns `[B, H, W, C]`: the features' cotangent given the cotangent `[R, nr, nc, C]` of the gathered grid."""
  batch, height, width, channels = features.shape
  index = _grid_index(base, rows, cols, height, width)
  g_table = jnp.zeros((batch * (height + 1) * (width + 1), channels), jnp.float32)
  g_table = g_table.at[index.reshape(-1)].add(g_grid.reshape(-1, channels), mode="promise_in_bounds")
  g_table = g_table.reshape(batch, height + 1, width + 1, channels)
  # P[i, j] sums F[:i, :j], so F[i, j] collects the cotangents of every P[i', j'] with i' > i and j' > j.
  suffix = jnp.flip(jnp.cumsum(jnp.cumsum(jnp.flip(g_table, (1, 2)), axis=1), axis=2), (1, 2))
  return suffix[:, 1:, 1:].astype(features.dtype)


def _placement(n_bins: int, n_runs: int) -> jax.Array:
  """Returns f32 `[n_bins, 5, n_runs]`: 1 where run u of bin p is run 3p + u of the RoI."""
  run = 3 * jnp.arange(n_bins)[:, None, None] + jnp.arange(5)[None, :, None]
  return (jnp.arange(n_runs)[None, None, :] == run).astype(jnp.float32)


def _spread(w: jax.Array, n_runs: int) -> jax.Array:
  """Returns `[R, n_bins, n_runs]` with bin p's five run weights `w [R, n_bins, 5]` at runs 3p..3p+4, else 0."""
  return jnp.einsum("rpu,puk->rpk", w, _placement(w.shape[1], n_runs))


def _gather_five(dense: jax.Array) -> jax.Array:
  """Transpose of `_spread` (for cotangents): `[R, n_bins, n_runs]` -> `[R, n_bins, 5]`."""
  return jnp.einsum("rpk,puk->rpu", dense, _placement(*dense.shape[1:]))


def _backward_difference(w: jax.Array) -> jax.Array:
  """Transpose of `G[k + 1] - G[k]` along the last axis: `[..., n]` -> `[..., n + 1]`."""
  widths = [(0, 0)] * (w.ndim - 1)
  return jnp.pad(w, widths + [(1, 0)]) - jnp.pad(w, widths + [(0, 1)])


@jax.custom_vjp
def _pool_runs(features, base, rows, cols, wy, wx):
  """Returns `[R, P, Q, C]`: sum over runs u, v of wy[p, u] wx[q, v] (sum of F over run u x run v of bin p, q)."""
  return _pool_runs_fwd_impl(features, base, rows, cols, wy, wx, keep_by_rows=False)[0]


def _pool_runs_fwd_impl(features, base, rows, cols, wy, wx, *, keep_by_rows):
  """Returns `(out, by_cols [R, 3P + 2, Q, C], by_rows [R, P, 3Q + 2, C] or None)`."""
  sums = run_sums(features, base, rows, cols)  # [R, 3P + 2, 3Q + 2, C]
  dense_y, dense_x = _spread(wy, sums.shape[1]), _spread(wx, sums.shape[2])
  # Dense [P, 3P + 2] weights (five non-zeros a row) make both contractions batched matmuls over operands laid
  # out as they are (no transposes of the big arrays): columns per (RoI, row run), then rows per RoI.
  by_cols = _per_row_run(dense_x, sums)
  out = jnp.einsum("rpk,rkqc->rpqc", dense_y, by_cols)
  by_rows = jnp.einsum("rpk,rklc->rplc", dense_y, sums) if keep_by_rows else None
  return out, by_cols, by_rows


def _per_row_run(dense_x, a):
  """Returns `[R, K, Q, C]`: `sum_l dense_x[r, q, l] a[r, k, l, c]`, as a matmul batched over (RoI, row run)."""
  dense_x = jnp.broadcast_to(dense_x[:, None], (a.shape[0], a.shape[1]) + dense_x.shape[1:])
  return jnp.einsum("rkql,rklc->rkqc", dense_x, a)


def _pool_runs_fwd(features, base, rows, cols, wy, wx):
  # Symbolic zeros say which cotangents are wanted; the box path keeps two partial contractions for them. The
  # choices travel as the (static) keys of the residual dict.
  args = [a.value for a in (features, base, rows, cols, wy, wx)]
  out, by_cols, by_rows = _pool_runs_fwd_impl(*args, keep_by_rows=wx.perturbed)
  residuals = {"args": args}
  if features.perturbed:
    residuals["features"] = None
  if wy.perturbed:
    residuals["by_cols"] = by_cols
  if wx.perturbed:
    residuals["by_rows"] = by_rows
  return out, residuals


def _pool_runs_bwd(residuals, g):
  features, base, rows, cols, wy, wx = residuals["args"]
  if isinstance(g, SymbolicZero):
    return (None,) * 6
  g = g.astype(jnp.float32)
  d_features = d_wy = d_wx = None
  if "by_cols" in residuals:
    d_wy = _gather_five(jnp.einsum("rpqc,rkqc->rpk", g, residuals["by_cols"]))
  if "by_rows" in residuals:
    d_wx = _gather_five(jnp.einsum("rpqc,rplc->rpql", g, residuals["by_rows"]).sum(axis=1))
  if "features" in residuals:
    # The run sums are second differences of the gathered prefix grid, so the grid's cotangent is the bins'
    # cotangent spread by the backward differences of the run weights, one axis at a time.
    coef_y = _backward_difference(_spread(wy, rows.shape[1] - 1))
    coef_x = _backward_difference(_spread(wx, cols.shape[1] - 1))
    g_grid = _per_row_run(jnp.swapaxes(coef_x, 1, 2), jnp.einsum("rpk,rpqc->rkqc", coef_y, g))
    d_features = _transpose_run_sums(g_grid, base, rows, cols, features)
  return d_features, None, None, None, d_wy, d_wx


_pool_runs.defvjp(_pool_runs_fwd, _pool_runs_bwd, symbolic_zeros=True)


def _edge_runs(edges, extent):
  """Per axis: int32 run boundaries `[R, 3E]` (j, j+1, j+2 for each edge's j = floor) and `(floor, frac)`."""
  floor = jnp.clip(jnp.floor(edges), -2.0, float(extent))  # farther out, every run is empty anyway
  frac = edges - jnp.floor(edges)  # derivative 1 w.r.t. the edge: this is where the box gradient enters
  first = floor.astype(jnp.int32)
  bounds = (first[..., None] + jnp.arange(3, dtype=jnp.int32)).reshape(first.shape[0], -1)
  return bounds, floor, frac


def _cell_integral(xa, xb, j):
  """Returns the integral of hat(x - j) over [xa, xb], summed per linear piece so that nothing cancels."""
  s, e = jnp.clip(xa, j - 1.0, j), jnp.clip(xb, j - 1.0, j)
  rising = (e - s) * ((s - (j - 1.0)) + (e - (j - 1.0))) * 0.5
  s, e = jnp.clip(xa, j, j + 1.0), jnp.clip(xb, j, j + 1.0)
  falling = (e - s) * (((j + 1.0) - s) + ((j + 1.0) - e)) * 0.5
  return rising + falling


def _bin_weights(edges, floor, frac):
  """Returns `[R, n_bins, 5]`: the weights of the five runs of each bin along one axis.

  A bin spanning two cells or more takes (1 - A(fa), 1 - B(fa), 1, A(fb), B(fb)), each computed without
  cancellation. A narrower bin would get its weights as differences of nearly equal terms (the signed middle
  run overlaps the edge runs), losing ~1e-7 / width relative precision; it uses the runs [ja, ja+1),
  [ja+1, ja+2) and [jb+1, jb+2) (= [ja+2, ja+3) when jb = ja + 1) with each cell's integral computed directly.
  """
  xa, xb, ja, jb, fa, fb = edges[:, :-1], edges[:, 1:], floor[:, :-1], floor[:, 1:], frac[:, :-1], frac[:, 1:]
  wide = jnp.stack([0.5 * (1.0 - fa)**2, 1.0 - 0.5 * fa**2, jnp.ones_like(fa), 1.0 - 0.5 * (1.0 - fb)**2,
                    0.5 * fb**2], axis=-1)
  zero = jnp.zeros_like(fa)
  third = jnp.where(jb > ja, _cell_integral(xa, xb, ja + 2.0), zero)
  narrow = jnp.stack([_cell_integral(xa, xb, ja), _cell_integral(xa, xb, ja + 1.0), zero, zero, third], axis=-1)
  return jnp.where((jb - ja >= 2.0)[..., None], wide, narrow)


def prroi_pool(features: jax.Array, boxes: jax.Array, box_indices: jax.Array, *, output_size: int | Sequence[int],
               spatial_scale: float = 1.0) -> jax.Array:
  """Returns `[R, oh, ow, C]` Precise RoI Pooling (IoU-Net): the mean of the bilinear surface over each bin.

  Args:
    features: `[B, H, W, C]` feature maps (NHWC; any float dtype, computed in float32, returned as given).
    boxes: `[R, 4]` xyxy boxes in image pixels; feature coordinates are `boxes * spatial_scale - 0.5`.
    box_indices: int `[R]`, the image of each box in [0, B).
    output_size: `oh` (= `ow`) or `(oh, ow)` bins.
    spatial_scale: feature cells per image pixel (1 / stride).

  Differentiable w.r.t. `features` and `boxes`; jittable and vmappable. Invalid boxes (non-finite, index outside
  [0, B), bins under `MIN_BIN_SIZE` cells) give zeros with zero gradients.
  """
  features = jnp.asarray(features)
  oh, ow = output_hw(output_size)
  n, height, width, _ = features.shape
  boxes = jnp.asarray(boxes, jnp.float32)
  box_indices = jnp.asarray(box_indices, jnp.int32)
  scaled = boxes * jnp.float32(spatial_scale) - 0.5
  bins = (scaled[:, 2:] - scaled[:, :2]) / jnp.array([ow, oh], jnp.float32)
  valid = (jnp.all(jnp.isfinite(scaled), axis=-1) & jnp.all(jnp.isfinite(bins), axis=-1)
           & jnp.all(bins >= MIN_BIN_SIZE, axis=-1) & (box_indices >= 0) & (box_indices < n))
  scaled = jnp.where(valid[:, None], scaled, jnp.array([0.0, 0.0, ow, oh], jnp.float32))
  bins = (scaled[:, 2:] - scaled[:, :2]) / jnp.array([ow, oh], jnp.float32)
  x_edges = scaled[:, :1] + jnp.arange(ow + 1, dtype=jnp.float32) * bins[:, :1]
  y_edges = scaled[:, 1:2] + jnp.arange(oh + 1, dtype=jnp.float32) * bins[:, 1:]
  cols, x_floor, x_frac = _edge_runs(x_edges, width)
  rows, y_floor, y_frac = _edge_runs(y_edges, height)
  base = jnp.clip(box_indices, 0, n - 1) * ((height + 1) * (width + 1))
  wx, wy = _bin_weights(x_edges, x_floor, x_frac), _bin_weights(y_edges, y_floor, y_frac)
  integral = _pool_runs(features, base, rows, cols, wy, wx)  # bin (p, q) uses runs 3p..3p+4 x 3q..3q+4
  # The mean over the bin as its float32 edges delimit it (not bin_w * bin_h, an ulp of the edges away), so a
  # constant surface pools to exactly itself; edges that round together give an empty bin and 0.
  area = (y_edges[:, 1:] - y_edges[:, :-1])[:, :, None] * (x_edges[:, 1:] - x_edges[:, :-1])[:, None, :]
  usable = valid[:, None, None] & (area > 0.0)
  out = integral * jnp.where(usable, 1.0 / jnp.where(usable, area, 1.0), 0.0)[..., None]
  return out.astype(features.dtype)
