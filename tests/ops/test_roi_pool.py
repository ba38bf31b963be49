"""RoI max pooling against a NumPy transcription of Fast R-CNN's quantised pooling, and torchvision itself."""

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

from jaxdet.ops.roi_pool import roi_pool as _roi_pool_eager

roi_pool = jax.jit(_roi_pool_eager, static_argnames=("output_size", "spatial_scale"))


@functools.partial(jax.jit, static_argnames=("output_size", "spatial_scale"))
def pool_and_vjp(features, boxes, indices, cotangent, *, output_size, spatial_scale):
  """Returns `(output, d_features)`: one compilation serves the NumPy and the torchvision comparisons."""
  fn = lambda f: _roi_pool_eager(f, boxes, indices, output_size=output_size, spatial_scale=spatial_scale)
  out, vjp = jax.vjp(fn, features)
  return out, vjp(cotangent)[0]


def numpy_roi_pool(features, boxes, box_indices, *, output_size, spatial_scale):
  """Returns `(output, argmax)`: loops over RoIs, bins, cells and channels, as torchvision's CPU kernel (NHWC).

  Bin edges are computed in float32 as the kernel does; argmax is the flat (row * W + col) cell, -1 if none.
  """
  _, height, width, channels = features.shape
  oh, ow = output_size
  out = np.zeros((len(boxes), oh, ow, channels), np.float32)
  argmax = np.full(out.shape, -1)
  f32 = np.float32
  c_round = lambda v: int(math.copysign(math.floor(abs(float(v)) + 0.5), float(v)))
  for r, (box, b) in enumerate(zip(boxes, box_indices)):
    x1, y1, x2, y2 = (c_round(f32(v) * f32(spatial_scale)) for v in box)
    bin_h = f32(max(y2 - y1 + 1, 1)) / f32(oh)
    bin_w = f32(max(x2 - x1 + 1, 1)) / f32(ow)
    for ph in range(oh):
      h0 = min(max(int(math.floor(f32(ph) * bin_h)) + y1, 0), height)
      h1 = min(max(int(math.ceil(f32(ph + 1) * bin_h)) + y1, 0), height)
      for pw in range(ow):
        w0 = min(max(int(math.floor(f32(pw) * bin_w)) + x1, 0), width)
        w1 = min(max(int(math.ceil(f32(pw + 1) * bin_w)) + x1, 0), width)
        if h1 <= h0 or w1 <= w0:
          continue
        for c in range(channels):
          best, best_at = -np.finfo(np.float32).max, -1
          for h in range(h0, h1):
            for w in range(w0, w1):
              if features[b, h, w, c] > best:
                best, best_at = features[b, h, w, c], h * width + w
          out[r, ph, pw, c], argmax[r, ph, pw, c] = best, best_at
  return out, argmax


def numpy_roi_pool_grad(features, argmax, box_indices, cotangent):
  """The course's dL/dx_i = sum over bins whose argmax is i of dL/dy."""
  _, height, width, channels = features.shape
  grad = np.zeros(features.shape)
  for r, b in enumerate(box_indices):
    for idx in np.ndindex(argmax.shape[1:]):
      i = argmax[(r, *idx)]
      if i >= 0:
        grad[b, i // width, i % width, idx[-1]] += cotangent[(r, *idx)]
  return grad


def features_and_rois(seed, *, batch=2, height=11, width=14, channels=3, n=10, stride=4, ties=False):
  rng = np.random.default_rng(seed)
  features = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
  if ties:  # ReLU-like maps: many equal maxima (zeros) and repeated values
    features = np.maximum(np.round(features * 2) / 2, 0.0).astype(np.float32)
    features[:, 1:8, 2:10, 0] = -np.inf  # never beats the scan's -FLT_MAX start: such bins give -FLT_MAX
  size = stride * max(height, width)
  wh = np.exp(rng.uniform(np.log(1.0), np.log(1.5 * size), (n, 2)))
  xy = rng.uniform(-0.2 * size, 1.2 * size, (n, 2)) - wh / 2
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  return features, boxes, rng.integers(0, batch, n).astype(np.int32)


CASES = [((7, 7), 0.25, False), ((3, 5), 0.25, True), ((2, 2), 1.0, False), ((1, 1), 0.5, True)]


@pytest.mark.parametrize("output_size,scale,ties", CASES)
def test_forward_and_gradient_match_numpy_transcription(output_size, scale, ties):
  features, boxes, indices = features_and_rois(len(output_size) + output_size[0], n=24, ties=ties)
  want, argmax = numpy_roi_pool(features, boxes, indices, output_size=output_size, spatial_scale=scale)
  cotangent = np.random.default_rng(0).normal(size=want.shape).astype(np.float32)
  got, d_features = pool_and_vjp(features, boxes, indices, cotangent, output_size=output_size, spatial_scale=scale)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(d_features, numpy_roi_pool_grad(features, argmax, indices, cotangent), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("output_size,scale,ties", CASES)
def test_forward_and_backward_match_torchvision(output_size, scale, ties):
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  features, boxes, indices = features_and_rois(11 + output_size[1], n=24, ties=ties)
  cotangent = np.random.default_rng(1).normal(size=(len(boxes), *output_size, 3)).astype(np.float32)
  torch_features = torch.from_numpy(features.transpose(0, 3, 1, 2).copy()).requires_grad_()
  rois = torch.from_numpy(np.concatenate([indices[:, None], boxes], axis=1).astype(np.float32))
  theirs = ops.roi_pool(torch_features, rois, output_size, scale)
  theirs.backward(torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy()))
  ours, d_features = pool_and_vjp(features, boxes, indices, cotangent, output_size=output_size,
                                  spatial_scale=scale)
  np.testing.assert_array_equal(ours, theirs.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_allclose(d_features, torch_features.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_bins_larger_than_a_tile_are_scanned_whole():
  # One bin spanning the whole map (and beyond) needs several tiles of the scan; the maximum may be anywhere.
  features, _, _ = features_and_rois(3, height=13, width=17)
  boxes = np.array([[-20.0, -20.0, 90.0, 70.0], [0.0, 0.0, 67.0, 51.0], [30.0, 2.0, 66.0, 50.0]], np.float32)
  indices = np.array([0, 1, 1], np.int32)
  for size in [(1, 1), (1, 3)]:
    want, _ = numpy_roi_pool(features, boxes, indices, output_size=size, spatial_scale=0.25)
    np.testing.assert_array_equal(roi_pool(features, boxes, indices, output_size=size, spatial_scale=0.25), want)
  np.testing.assert_array_equal(roi_pool(features, boxes[:1], indices[:1], output_size=1, spatial_scale=0.25),
                                features[0].max(axis=(0, 1))[None, None, None])


def test_empty_bins_and_invalid_boxes_give_zeros_with_finite_gradients():
  features, _, _ = features_and_rois(4)
  boxes = np.array([[200.0, 200.0, 260.0, 230.0],  # wholly outside the map: every bin empty
                    [np.nan, 0.0, 10.0, 10.0], [0.0, 0.0, np.inf, 10.0], [4.0, 4.0, 30.0, 30.0],
                    [4.0, 4.0, 30.0, 30.0]], np.float32)
  indices = np.array([0, 0, 1, 1, 5], np.int32)  # the last index names no image
  fn = lambda f: roi_pool(f, boxes, indices, output_size=3, spatial_scale=0.25)
  out = np.asarray(fn(features))
  np.testing.assert_array_equal(out[[0, 1, 2, 4]], 0.0)
  want, _ = numpy_roi_pool(features, boxes[3:4], indices[3:4], output_size=(3, 3), spatial_scale=0.25)
  np.testing.assert_array_equal(out[3:4], want)
  grad = np.asarray(jax.grad(lambda f: jnp.sum(fn(f)))(features))
  assert np.all(np.isfinite(grad)) and grad[0].sum() == 0.0


def test_gradient_matches_finite_differences():
  features, boxes, indices = features_and_rois(5, channels=2, n=4)  # continuous values: no ties
  check_grads(lambda f: roi_pool(f, boxes, indices, output_size=(2, 3), spatial_scale=0.25), (features,),
              order=1, modes=["rev"], eps=1e-3)


class RoiPoolVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_values_under_jit_and_without(self):
    features, boxes, indices = features_and_rois(6)
    out = self.variant(lambda f, b, i: _roi_pool_eager(f, b, i, output_size=(2, 3), spatial_scale=0.25))(
        features, boxes, indices)
    chex.assert_shape(out, (len(boxes), 2, 3, 3))
    np.testing.assert_array_equal(
        out, numpy_roi_pool(features, boxes, indices, output_size=(2, 3), spatial_scale=0.25)[0])


def test_vmap_over_stacks_of_feature_maps_equals_a_loop():
  features, boxes, indices = features_and_rois(7)
  stack = np.stack([features, -features, 3.0 * features])
  fn = lambda f: roi_pool(f, boxes, indices, output_size=3, spatial_scale=0.25)
  np.testing.assert_array_equal(jax.vmap(fn)(stack), np.stack([fn(f) for f in stack]))


@given(st.floats(-4.0, 4.0), st.lists(st.floats(-10.0, 70.0), min_size=4, max_size=4))
def test_adding_a_constant_shifts_every_nonempty_bin(shift, coords):
  # Max pooling commutes with adding a constant; empty bins stay 0.
  features, _, _ = features_and_rois(8)
  boxes = np.array([[min(coords[0], coords[2]), min(coords[1], coords[3]), max(coords[0], coords[2]),
                     max(coords[1], coords[3])]], np.float32)
  indices = np.zeros(1, np.int32)
  base = np.asarray(roi_pool(features, boxes, indices, output_size=(2, 3), spatial_scale=0.25))
  shifted = np.asarray(roi_pool(features + np.float32(shift), boxes, indices, output_size=(2, 3), spatial_scale=0.25))
  _, argmax = numpy_roi_pool(features, boxes, indices, output_size=(2, 3), spatial_scale=0.25)
  nonempty = argmax >= 0
  np.testing.assert_allclose(shifted[nonempty], base[nonempty] + np.float32(shift), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(shifted[~nonempty], 0.0)
