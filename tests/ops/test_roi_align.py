"""RoI Align against a NumPy transcription of the Mask R-CNN / torchvision algorithm, and torchvision itself."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxdet.ops.roi_align import roi_align as _roi_align_eager

# Jitted once per static configuration: op-by-op dispatch of the unrolled gathers is what would make tests slow.
STATIC = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "max_sampling_ratio", "method")
roi_align = jax.jit(_roi_align_eager, static_argnames=STATIC)


@functools.partial(jax.jit, static_argnames=STATIC)
def align_and_vjp(features, boxes, indices, cotangent, **static):
  """Returns `(output, d_features)`: one compilation serves the NumPy and the torchvision comparisons."""
  out, vjp = jax.vjp(lambda f: _roi_align_eager(f, boxes, indices, **static), features)
  return out, vjp(cotangent)[0]


def numpy_roi_align(features, boxes, box_indices, *, output_size, spatial_scale, sampling_ratio, aligned,
                    max_sampling_ratio=None):
  """float64 loops over RoIs, bins and points: torchvision's roi_align_forward_kernel_impl, NHWC."""
  _, height, width, channels = features.shape
  oh, ow = output_size
  out = np.zeros((len(boxes), oh, ow, channels))

  def bilinear(image, y, x):
    if y < -1.0 or y > height or x < -1.0 or x > width:
      return np.zeros(channels)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
      y_high = y_low = height - 1
      y = float(y_low)
    else:
      y_high = y_low + 1
    if x_low >= width - 1:
      x_high = x_low = width - 1
      x = float(x_low)
    else:
      x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * image[y_low, x_low] + hy * lx * image[y_low, x_high] + ly * hx * image[y_high, x_low]
            + ly * lx * image[y_high, x_high])

  offset = 0.5 if aligned else 0.0
  for r, (box, b) in enumerate(zip(boxes.astype(np.float64), box_indices)):
    x1, y1, x2, y2 = box * spatial_scale - offset
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
      roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / oh, roi_w / ow
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / oh)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / ow)
    if max_sampling_ratio is not None:
      grid_h, grid_w = min(grid_h, max_sampling_ratio), min(grid_w, max_sampling_ratio)
    count = max(grid_h * grid_w, 1)
    for ph in range(oh):
      for pw in range(ow):
        acc = np.zeros(channels)
        for iy in range(grid_h):
          y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
          for ix in range(grid_w):
            acc += bilinear(features[b], y, x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w)
        out[r, ph, pw] = acc / count
  return out


def random_rois(rng, n, *, image_size, batch, min_size=0.5, max_size=None, outside=0.2):
  """`(boxes [n, 4], indices [n])`: boxes of varied size, some reaching past the image border."""
  max_size = max_size or image_size
  wh = np.exp(rng.uniform(np.log(min_size), np.log(max_size), (n, 2)))
  xy = rng.uniform(-outside * image_size, image_size * (1 + outside), (n, 2)) - wh / 2
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  return boxes, rng.integers(0, batch, n).astype(np.int32)


def features_and_rois(seed, *, batch=2, height=12, width=15, channels=3, n=9, stride=4):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
  boxes, indices = random_rois(rng, n, image_size=stride * max(height, width), batch=batch)
  return features, boxes, indices


CASES = [  # (output_size, spatial_scale, sampling_ratio, aligned); sampling_ratio 1 is covered further down
    ((7, 7), 0.25, 2, True),
    ((3, 5), 1.0, 3, False),
    ((5, 4), 0.25, 0, True),
    ((2, 3), 0.125, 0, False),
]


@pytest.mark.parametrize("output_size,scale,ratio,aligned", CASES)
def test_matches_numpy_transcription(output_size, scale, ratio, aligned):
  features, boxes, indices = features_and_rois(len(output_size) + int(10 * scale) + ratio, n=16)
  cotangent = np.zeros((len(boxes), *output_size, features.shape[-1]), np.float32)
  got, _ = align_and_vjp(features, boxes, indices, cotangent, output_size=output_size, spatial_scale=scale,
                         sampling_ratio=ratio, aligned=aligned, max_sampling_ratio=8)
  want = numpy_roi_align(features, boxes, indices, output_size=output_size, spatial_scale=scale,
                         sampling_ratio=ratio, aligned=aligned)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("output_size,scale,ratio,aligned", CASES)
def test_forward_and_backward_match_torchvision(output_size, scale, ratio, aligned):
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(ratio + 3 * aligned)
  features, boxes, indices = features_and_rois(ratio + 7 * aligned, n=16)
  cotangent = rng.normal(size=(len(boxes), *output_size, features.shape[-1])).astype(np.float32)
  torch_features = torch.from_numpy(features.transpose(0, 3, 1, 2).copy()).requires_grad_()
  rois = torch.from_numpy(np.concatenate([indices[:, None], boxes], axis=1).astype(np.float32))
  theirs = ops.roi_align(torch_features, rois, output_size, scale, ratio, aligned)
  theirs.backward(torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy()))

  ours, d_features = align_and_vjp(features, boxes, indices, cotangent, output_size=output_size,
                                   spatial_scale=scale, sampling_ratio=ratio, aligned=aligned, max_sampling_ratio=8)
  np.testing.assert_allclose(ours, theirs.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(d_features, torch_features.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=5e-5)


class RoiAlignVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_values_under_jit_and_without(self):
    features, boxes, indices = features_and_rois(0)
    fn = self.variant(lambda f, b, i: _roi_align_eager(f, b, i, output_size=(1, 2), spatial_scale=0.25,
                                                       sampling_ratio=1))
    out = fn(features, boxes, indices)
    chex.assert_shape(out, (len(boxes), 1, 2, features.shape[-1]))
    want = numpy_roi_align(features, boxes, indices, output_size=(1, 2), spatial_scale=0.25, sampling_ratio=1,
                           aligned=True)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-5)


def test_adaptive_sampling_needs_a_static_bound():
  features, boxes, indices = features_and_rois(1)
  with pytest.raises(ValueError, match="max_sampling_ratio"):
    roi_align(features, boxes, indices, output_size=2, sampling_ratio=0)


@pytest.mark.parametrize("bound", [1, 2, 5])
def test_adaptive_sampling_is_capped_at_the_bound(bound):
  # Large boxes on a 2x2 output need ceil(roi / 2) > bound points per axis: each RoI uses the bound instead.
  features, boxes, indices = features_and_rois(2, height=30, width=30, stride=1)
  boxes = np.array([[0.3, 1.2, 29.0, 27.5], [5.0, 2.0, 9.0, 25.0], [3.0, 3.0, 3.5, 3.2]], np.float32)
  indices = np.array([0, 1, 1], np.int32)
  got = roi_align(features, boxes, indices, output_size=2, sampling_ratio=0, max_sampling_ratio=bound)
  want = numpy_roi_align(features, boxes, indices, output_size=(2, 2), spatial_scale=1.0, sampling_ratio=0,
                         aligned=True, max_sampling_ratio=bound)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_long_adaptive_grids_loop_in_passes_with_the_same_values_and_gradients():
  # A bound of 5 (25 points a bin) runs in a loop of short passes; no RoI here needs more than 2 points a side,
  # so it must agree, gradients included, with the single unrolled pass that a bound of 2 gives.
  features, _, _ = features_and_rois(8, channels=2)
  boxes = np.array([[3.1, 4.2, 20.5, 25.0], [30.0, 2.0, 33.0, 9.5], [-3.0, 17.0, 14.0, 40.0]], np.float32)
  indices = np.array([0, 1, 1], np.int32)
  cotangent = np.random.default_rng(1).normal(size=(len(boxes), 3, 3, 2)).astype(np.float32)

  def value_and_grads(bound):
    fn = lambda f, b: _roi_align_eager(f, b, indices, output_size=3, spatial_scale=0.25, sampling_ratio=0,
                                       max_sampling_ratio=bound)
    out, vjp = jax.vjp(fn, jnp.asarray(features), jnp.asarray(boxes))
    return (out,) + vjp(jnp.asarray(cotangent))

  for looped, unrolled in zip(jax.jit(value_and_grads, static_argnums=0)(5),
                              jax.jit(value_and_grads, static_argnums=0)(2)):
    np.testing.assert_allclose(looped, unrolled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned", [True, False])
def test_gradients_match_finite_differences(aligned):
  features, boxes, indices = features_and_rois(3, n=4, channels=2)
  # Nudge coordinates off the feature grid so that no sample point sits on a kink of the interpolation.
  boxes = boxes + np.float32(0.0137)

  def fn(f, b):
    return roi_align(f, b, indices, output_size=(2, 3), spatial_scale=0.25, sampling_ratio=1, aligned=aligned)

  check_grads(fn, (features, boxes), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e38])
def test_invalid_boxes_give_zeros_and_finite_gradients(bad):
  features, boxes, indices = features_and_rois(4, n=5)
  boxes[1, 2] = bad
  boxes[3] = [bad, bad, -bad, bad]
  if bad == 3e38:  # finite but enormous boxes: every sample point lands far outside the map
    boxes[1] = [-3e38, 0.0, 3.4e38, 10.0]
  indices[4] = 7  # no such image
  fn = lambda f, b: roi_align(f, b, indices, output_size=2, spatial_scale=0.25, sampling_ratio=1)
  out = np.asarray(fn(features, boxes))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[[1, 3, 4]], 0.0)
  good = [0, 2]
  np.testing.assert_allclose(
      out[good], roi_align(features, boxes[good], indices[good], output_size=2, spatial_scale=0.25, sampling_ratio=1),
      rtol=1e-6)
  d_features, d_boxes = jax.grad(lambda f, b: jnp.sum(fn(f, b) ** 2), argnums=(0, 1))(features, boxes)
  assert np.all(np.isfinite(d_features)) and np.all(np.isfinite(d_boxes))
  np.testing.assert_array_equal(np.asarray(d_boxes)[[1, 3, 4]], 0.0)


def test_degenerate_finite_boxes_are_sampled_as_in_torchvision():
  # Zero and negative widths are well-defined point samples; the NumPy transcription follows the C++ kernel.
  features, _, _ = features_and_rois(5)
  boxes = np.array([[10.0, 10.0, 10.0, 20.0], [20.0, 8.0, 12.0, 4.0], [5.0, 5.0, 5.0, 5.0]], np.float32)
  indices = np.array([0, 1, 0], np.int32)
  for aligned in (True, False):
    got = roi_align(features, boxes, indices, output_size=2, spatial_scale=0.25, aligned=aligned)
    want = numpy_roi_align(features, boxes, indices, output_size=(2, 2), spatial_scale=0.25, sampling_ratio=2,
                           aligned=aligned)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_vmap_over_stacks_of_feature_maps_equals_a_loop():
  features, boxes, indices = features_and_rois(6)
  stack = np.stack([features, 2.0 * features + 1.0, -features])
  fn = lambda f: roi_align(f, boxes, indices, output_size=3, spatial_scale=0.25)
  np.testing.assert_allclose(jax.vmap(fn)(stack), np.stack([fn(f) for f in stack]), rtol=1e-6, atol=1e-6)


def test_bfloat16_features_give_bfloat16_output_close_to_float32():
  features, boxes, indices = features_and_rois(7)
  out = roi_align(features.astype(jnp.bfloat16), boxes, indices, output_size=3, spatial_scale=0.25)
  assert out.dtype == jnp.bfloat16
  want = roi_align(features.astype(jnp.bfloat16).astype(np.float32), boxes, indices, output_size=3,
                   spatial_scale=0.25)
  np.testing.assert_allclose(out.astype(np.float32), want, rtol=1e-2, atol=1e-2)


@given(st.floats(-3.0, 3.0), st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4))
def test_a_constant_map_pools_to_the_constant_inside_the_image(value, unit):
  # Every point of a box inside the image lies in [-0.5, size - 0.5] cells, where interpolation is exact.
  height, width, stride = 6, 9, 4
  x = sorted([unit[0] * width * stride, unit[1] * width * stride])
  y = sorted([unit[2] * height * stride, unit[3] * height * stride])
  boxes = np.array([[x[0], y[0], x[1] + 1e-3, y[1] + 1e-3]], np.float32)
  features = np.full((1, height, width, 2), value, np.float32)
  out = roi_align(features, boxes, np.zeros(1, np.int32), output_size=(2, 3), spatial_scale=1 / stride,
                  sampling_ratio=0, max_sampling_ratio=2)
  np.testing.assert_allclose(out, value, rtol=1e-5, atol=1e-5)


# The "rows" formulation (row interpolation first, then column weights as a matrix product) must give the same
# numbers and gradients as the tap formulation, which the tests above hold to NumPy and torchvision.


@pytest.mark.parametrize("output_size,scale,ratio,aligned", CASES)
def test_rows_formulation_matches_numpy_and_the_tap_gradients(output_size, scale, ratio, aligned):
  features, boxes, indices = features_and_rois(len(output_size) + int(10 * scale) + ratio + 11, n=16)
  cotangent = np.random.default_rng(ratio).normal(size=(len(boxes), *output_size, features.shape[-1]))
  cotangent = cotangent.astype(np.float32)
  static = dict(output_size=output_size, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned,
                max_sampling_ratio=8)
  rows, d_rows = align_and_vjp(features, boxes, indices, cotangent, method="rows", **static)
  taps, d_taps = align_and_vjp(features, boxes, indices, cotangent, method="taps", **static)
  want = numpy_roi_align(features, boxes, indices, output_size=output_size, spatial_scale=scale,
                         sampling_ratio=ratio, aligned=aligned)
  np.testing.assert_allclose(rows, want, rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(d_rows, d_taps, rtol=1e-5, atol=5e-5)


def test_rows_formulation_box_gradients_match_finite_differences():
  features, boxes, indices = features_and_rois(3, n=4, channels=2)
  boxes = boxes + np.float32(0.0137)

  def fn(f, b):
    return roi_align(f, b, indices, output_size=(2, 3), spatial_scale=0.25, sampling_ratio=1, method="rows")

  check_grads(fn, (features, boxes), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 3e38])
def test_rows_formulation_invalid_boxes_give_zeros_and_finite_gradients(bad):
  features, boxes, indices = features_and_rois(4, n=5)
  boxes[1, 2] = bad
  indices[4] = -1
  fn = lambda f, b: roi_align(f, b, indices, output_size=2, spatial_scale=0.25, sampling_ratio=1, method="rows")
  out = np.asarray(fn(features, boxes))
  np.testing.assert_array_equal(out[[1, 4]], 0.0)
  d_features, d_boxes = jax.grad(lambda f, b: jnp.sum(fn(f, b) ** 2), argnums=(0, 1))(features, boxes)
  assert np.all(np.isfinite(d_features)) and np.all(np.isfinite(d_boxes))


def test_unknown_method_is_refused():
  features, boxes, indices = features_and_rois(0)
  with pytest.raises(ValueError, match="method"):
    _roi_align_eager(features, boxes, indices, output_size=2, method="dense")
