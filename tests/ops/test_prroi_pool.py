"""Precise RoI Pooling against the closed-form integral (NumPy), brute-force quadrature and the course's gradient."""

from __future__ import annotations

import functools

import chex
import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxdet.ops.prroi_pool import prroi_pool as _prroi_pool_eager

# Jitted once per static configuration and shape; the tests share shapes so that compilations are reused.
prroi_pool = jax.jit(_prroi_pool_eager, static_argnames=("output_size", "spatial_scale"))


@functools.partial(jax.jit, static_argnames=("output_size", "spatial_scale"))
def pool_and_vjp(features, boxes, indices, cotangent, *, output_size, spatial_scale):
  """Returns `(output, d_features, d_boxes)` for the cotangent."""
  fn = lambda f, b: _prroi_pool_eager(f, b, indices, output_size=output_size, spatial_scale=spatial_scale)
  out, vjp = jax.vjp(fn, features, boxes)
  return (out,) + vjp(cotangent)


def hat_antiderivative(t):
  """G(t) = integral of max(0, 1 - |s|) over s < t."""
  t = np.asarray(t, np.float64)
  return np.where(t <= -1, 0.0, np.where(t <= 0, (t + 1)**2 / 2, np.where(t <= 1, 1 - (1 - t)**2 / 2, 1.0)))


def bin_geometry(box, *, output_size, spatial_scale):
  """`(x_edges, y_edges, areas [oh, ow])` in feature units, rounded to float32 as the op rounds them.

  The float32 edges are what the op integrates between; a thin bin's edges carry relative errors of
  ulp(x) / width, so comparing against float64 edges would measure float32 geometry, not the integral.
  """
  f32 = np.float32
  x1, y1, x2, y2 = np.asarray(box, f32) * f32(spatial_scale) - f32(0.5)
  oh, ow = output_size
  bw, bh = (x2 - x1) / f32(ow), (y2 - y1) / f32(oh)
  x_edges = np.array([x1 + f32(q) * bw for q in range(ow + 1)], np.float64)
  y_edges = np.array([y1 + f32(p) * bh for p in range(oh + 1)], np.float64)
  return x_edges, y_edges, np.diff(y_edges)[:, None] * np.diff(x_edges)[None, :]


def cell_weights(edges, size):
  """`[n_bins, size]`: integral of hat(x - j) over each bin for every cell j (cells outside the map are 0)."""
  j = np.arange(size)
  return np.stack([hat_antiderivative(b - j) - hat_antiderivative(a - j) for a, b in zip(edges[:-1], edges[1:])])


def numpy_prroi_pool(features, boxes, box_indices, *, output_size, spatial_scale):
  """Returns `(output, operators)`: the closed-form integral, separable per cell (float64), and per RoI the
  `(wy [oh, H], wx [ow, W], areas [oh, ow])` with output = wy F wx^T / areas."""
  _, height, width, _ = features.shape
  out, operators = [], []
  for box, b in zip(boxes, box_indices):
    x_edges, y_edges, area = bin_geometry(box, output_size=output_size, spatial_scale=spatial_scale)
    wy, wx = cell_weights(y_edges, height), cell_weights(x_edges, width)
    out.append(np.einsum("pi,qj,ijc->pqc", wy, wx, features[b].astype(np.float64)) / area[..., None])
    operators.append((wy, wx, area))
  return np.stack(out), operators


def bilinear_surface(image, x, y):
  """f(x, y) on arrays of points: bilinear interpolation of the zero-padded map (cell (i, j) at (j, i))."""
  height, width, _ = image.shape
  padded = np.pad(image.astype(np.float64), ((2, 2), (2, 2), (0, 0)))
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = np.clip(x0, -2, width), np.clip(y0, -2, height)  # far outside: all four corners are padding
  at = lambda yy, xx: padded[yy + 2, xx + 2]
  return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
          + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def quadrature_prroi_pool(features, boxes, box_indices, *, output_size, spatial_scale, points=96):
  """Brute force: the midpoint rule with points x points samples of the surface per bin."""
  oh, ow = output_size
  out = np.zeros((len(boxes), oh, ow, features.shape[-1]))
  u = (np.arange(points) + 0.5) / points
  for r, (box, b) in enumerate(zip(boxes, box_indices)):
    x_edges, y_edges, _ = bin_geometry(box, output_size=output_size, spatial_scale=spatial_scale)
    for p in range(oh):
      ys = y_edges[p] + u * (y_edges[p + 1] - y_edges[p])
      for q in range(ow):
        xs = x_edges[q] + u * (x_edges[q + 1] - x_edges[q])
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        out[r, p, q] = bilinear_surface(features[b], grid_x, grid_y).mean(axis=(0, 1))
  return out


def features_and_rois(seed, *, batch=2, height=10, width=13, channels=3, n=8, stride=4, min_size=0.3):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
  size = stride * max(height, width)
  wh = np.exp(rng.uniform(np.log(min_size * stride), np.log(1.2 * size), (n, 2)))
  xy = rng.uniform(-0.2 * size, 1.2 * size, (n, 2)) - wh / 2
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  return features, boxes, rng.integers(0, batch, n).astype(np.int32)


CASES = [((7, 7), 0.25), ((3, 5), 0.25), ((1, 1), 1.0)]  # the other tests reuse these compilations


@pytest.mark.parametrize("output_size,scale", CASES)
def test_forward_and_feature_gradient_match_the_closed_form(output_size, scale):
  features, boxes, indices = features_and_rois(sum(output_size))
  want, operators = numpy_prroi_pool(features, boxes, indices, output_size=output_size, spatial_scale=scale)
  cotangent = np.random.default_rng(0).normal(size=want.shape).astype(np.float32)
  got, d_features, _ = pool_and_vjp(features, boxes, indices, cotangent, output_size=output_size,
                                    spatial_scale=scale)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
  grad = np.zeros(features.shape)
  for (wy, wx, area), g, b in zip(operators, cotangent, indices):
    grad[b] += np.einsum("pi,qj,pqc->ijc", wy, wx, g / area[..., None])
  np.testing.assert_allclose(d_features, grad, rtol=1e-5, atol=5e-5)


def pool(features, boxes, indices, *, output_size, spatial_scale):
  """The forward value from the shared compilation of `pool_and_vjp`."""
  cotangent = np.zeros((len(boxes), *output_size, features.shape[-1]), np.float32)
  return np.asarray(pool_and_vjp(features, boxes, indices, cotangent, output_size=output_size,
                                 spatial_scale=spatial_scale)[0])


def test_matches_brute_force_quadrature():
  features, boxes, indices = features_and_rois(1)
  want = quadrature_prroi_pool(features, boxes, indices, output_size=(3, 5), spatial_scale=0.25, points=64)
  got = pool(features, boxes, indices, output_size=(3, 5), spatial_scale=0.25)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_thin_bins_keep_their_precision():
  # Bins far thinner than a cell, where the edge weights would cancel if computed as differences.
  features, boxes, indices = features_and_rois(2)
  boxes[:3] = [[10.3, 12.1, 10.45, 30.0], [4.0, 20.2, 30.0, 20.24], [17.9, 9.1, 18.2, 9.6]]
  want, _ = numpy_prroi_pool(features, boxes, indices, output_size=(3, 5), spatial_scale=0.25)
  np.testing.assert_allclose(pool(features, boxes, indices, output_size=(3, 5), spatial_scale=0.25), want,
                             rtol=1e-4, atol=1e-4)


def line_integral(image, x, y1, y2):
  """Integral of f(x, y) over y in [y1, y2], closed form: sum_ij F[i, j] hat(x - j) (G(y2 - i) - G(y1 - i))."""
  height, width, _ = image.shape
  hat_x = np.maximum(0.0, 1 - np.abs(x - np.arange(width)))
  wy = hat_antiderivative(y2 - np.arange(height)) - hat_antiderivative(y1 - np.arange(height))
  return np.einsum("i,j,ijc->c", wy, hat_x, image.astype(np.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_gradient_is_the_course_formula(seed):
  # One bin: dPr/dx1 = Pr / (x2 - x1) - integral f(x1, y) dy / ((x2 - x1)(y2 - y1)) in feature units, and its
  # mirror images for x2, y1, y2; the image-pixel gradient carries one more factor spatial_scale.
  features, boxes, indices = features_and_rois(10 + seed)
  rng = np.random.default_rng(seed)
  scale = 1.0
  box = boxes[0]
  box[:2] = [rng.uniform(-1, 10), rng.uniform(-1, 8)]
  box[2:] = box[:2] + rng.uniform(2, 10, 2).astype(np.float32)
  channel = rng.normal(size=3).astype(np.float32)  # differentiate a fixed mix of the channels of RoI 0 only
  cotangent = np.zeros((len(boxes), 1, 1, 3), np.float32)
  cotangent[0, 0, 0] = channel
  _, _, d_boxes = pool_and_vjp(features, boxes, indices, cotangent, output_size=(1, 1), spatial_scale=scale)
  x1, y1, x2, y2 = box.astype(np.float64) * scale - 0.5
  image = features[indices[0]]
  transposed = image.transpose(1, 0, 2)
  pr = np.dot(numpy_prroi_pool(features, boxes[:1], indices[:1], output_size=(1, 1), spatial_scale=scale)[0][0, 0, 0],
              channel)
  area = (x2 - x1) * (y2 - y1)
  want = np.array([
      pr / (x2 - x1) - np.dot(line_integral(image, x1, y1, y2), channel) / area,
      pr / (y2 - y1) - np.dot(line_integral(transposed, y1, x1, x2), channel) / area,
      -pr / (x2 - x1) + np.dot(line_integral(image, x2, y1, y2), channel) / area,
      -pr / (y2 - y1) + np.dot(line_integral(transposed, y2, x1, x2), channel) / area,
  ]) * scale
  np.testing.assert_allclose(d_boxes[0], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(d_boxes[1:], 0.0)


def test_gradients_match_finite_differences():
  features, boxes, indices = features_and_rois(3, min_size=2.0)
  fn = lambda f, b: prroi_pool(f, b, indices, output_size=(1, 1), spatial_scale=1.0)
  check_grads(fn, (features, boxes), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_degenerate_boxes_give_zeros_and_finite_gradients(bad):
  features, boxes, indices = features_and_rois(4)
  boxes[0, 1] = bad
  boxes[1] = [bad, bad, bad, bad]
  boxes[2] = [10.0, 10.0, 10.0, 20.0]  # zero width
  boxes[3] = [20.0, 20.0, 12.0, 10.0]  # inverted
  boxes[4] = [-3e38, 0.0, 3e38, 10.0]  # valid but enormous: finite, negligible output and gradients
  indices[5] = -1
  cotangent = np.ones((len(boxes), 3, 5, 3), np.float32)
  out, d_features, d_boxes = map(np.asarray, pool_and_vjp(features, boxes, indices, cotangent, output_size=(3, 5),
                                                         spatial_scale=0.25))
  degenerate = [0, 1, 2, 3, 5]
  np.testing.assert_array_equal(out[degenerate], 0.0)
  assert np.all(np.abs(out[4]) < 1e-30)
  want, _ = numpy_prroi_pool(features, boxes[6:], indices[6:], output_size=(3, 5), spatial_scale=0.25)
  np.testing.assert_allclose(out[6:], want, rtol=1e-5, atol=2e-5)
  assert np.all(np.isfinite(d_features)) and np.all(np.isfinite(d_boxes))
  np.testing.assert_array_equal(d_boxes[degenerate], 0.0)
  assert np.any(d_boxes[6:] != 0.0)


class PrRoiPoolVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_values_under_jit_and_without(self):
    features, boxes, indices = features_and_rois(5)
    out = self.variant(lambda f, b, i: _prroi_pool_eager(f, b, i, output_size=(1, 1), spatial_scale=1.0))(
        features, boxes, indices)
    chex.assert_shape(out, (len(boxes), 1, 1, 3))
    want, _ = numpy_prroi_pool(features, boxes, indices, output_size=(1, 1), spatial_scale=1.0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-5)


def test_vmap_over_stacks_of_feature_maps_equals_a_loop():
  features, boxes, indices = features_and_rois(6)
  stack = np.stack([features, 2.0 * features, -features + 1.0])
  fn = lambda f: prroi_pool(f, boxes, indices, output_size=3, spatial_scale=0.25)
  np.testing.assert_allclose(jax.vmap(fn)(stack), np.stack([fn(f) for f in stack]), rtol=1e-6, atol=1e-6)


@given(st.floats(-5.0, 5.0), st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4))
def test_a_constant_surface_pools_to_the_constant(value, unit):
  # Between the first and last cell centres the surface of a constant map is that constant.
  features, boxes, indices = features_and_rois(8)
  height, width, stride = features.shape[1], features.shape[2], 4
  x = sorted([(0.5 + u * (width - 1)) * stride for u in unit[:2]])
  y = sorted([(0.5 + u * (height - 1)) * stride for u in unit[2:]])
  x_max, y_max = (width - 0.5) * stride, (height - 0.5) * stride
  x1, y1 = min(x[0], x_max - 0.5), min(y[0], y_max - 0.5)
  boxes[0] = [x1, y1, max(min(x[1] + 0.5, x_max), x1 + 0.5), max(min(y[1] + 0.5, y_max), y1 + 0.5)]
  features = np.full_like(features, value)
  out = pool(features, boxes, indices, output_size=(3, 5), spatial_scale=1 / stride)
  np.testing.assert_allclose(out[0], value, rtol=1e-5, atol=1e-5)


@given(st.lists(st.floats(-5.0, 15.0), min_size=4, max_size=4))
def test_a_bin_is_the_mean_of_its_halves(coords):
  # The integral is additive: a box's value is the mean of the values of its left and right halves.
  features, boxes, indices = features_and_rois(7)
  x1, x2 = sorted(coords[:2])
  y1, y2 = sorted(coords[2:])
  x2 += 1.0
  mid = np.float32(0.5) * (np.float32(x1) + np.float32(x2))
  boxes[:3] = [[x1, y1, x2, y2 + 1.0], [x1, y1, mid, y2 + 1.0], [mid, y1, x2, y2 + 1.0]]
  indices[:3] = 0
  out = pool(features, boxes, indices, output_size=(1, 1), spatial_scale=1.0)
  widths = np.array([mid - np.float32(x1), np.float32(x2) - mid], np.float64)
  halves = (widths[0] * out[1] + widths[1] * out[2]) / widths.sum()
  np.testing.assert_allclose(out[0], halves, rtol=1e-4, atol=2e-5)
