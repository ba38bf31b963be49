"""The dense formulation of Precise RoI Pooling against the run formulation (`prroi_pool`, itself checked against the
closed form, quadrature and the course's gradient): values, gradients w.r.t. features and boxes, thin bins,
degenerate boxes, and the multi-level form against per-level pooling."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.prroi_dense import multilevel_prroi_pool, prroi_pool_image
from jaxdet.ops.prroi_pool import prroi_pool
from jaxdet.ops.roi_levels import fpn_levels
from tests.ops.test_prroi_pool import features_and_rois, numpy_prroi_pool


@functools.partial(jax.jit, static_argnames=("output_size", "spatial_scale", "dense"))
def pool_and_vjp(features, boxes, indices, cotangent, *, output_size, spatial_scale, dense):
  """`(output, d_features, d_boxes)` of the dense op (vmapped over images) or of `prroi_pool`."""
  if dense:
    def fn(f, b):  # every image pools every box; keep each box's own image
      per_image = jax.vmap(lambda image: prroi_pool_image(image, b, output_size=output_size,
                                                          spatial_scale=spatial_scale))(f)
      return per_image[indices, jnp.arange(b.shape[0])]
  else:
    fn = lambda f, b: prroi_pool(f, b, indices, output_size=output_size, spatial_scale=spatial_scale)  # noqa: E731
  out, vjp = jax.vjp(fn, features, boxes)
  return (out,) + vjp(cotangent)


@pytest.mark.parametrize("output_size,scale", [((7, 7), 0.25), ((3, 5), 1.0)])
def test_values_and_gradients_equal_the_run_formulation(output_size, scale):
  features, boxes, indices = features_and_rois(sum(output_size))
  boxes[:2] = [[10.3, 12.1, 10.45, 30.0], [4.0, 20.2, 30.0, 20.24]]  # bins far thinner than a cell
  cotangent = np.random.default_rng(0).normal(size=(len(boxes), *output_size, 3)).astype(np.float32)
  want = pool_and_vjp(features, boxes, indices, cotangent, output_size=output_size, spatial_scale=scale, dense=False)
  got = pool_and_vjp(features, boxes, indices, cotangent, output_size=output_size, spatial_scale=scale, dense=True)
  for g, w, name in zip(got, want, ("output", "d_features", "d_boxes")):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4, err_msg=name)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_degenerate_and_masked_boxes_give_zeros_and_zero_gradients(bad):
  features, boxes, _ = features_and_rois(4)
  boxes[0, 1] = bad
  boxes[1] = [10.0, 10.0, 10.0, 20.0]  # zero width
  boxes[2] = [20.0, 20.0, 12.0, 10.0]  # inverted
  valid = np.ones(len(boxes), bool)
  valid[3] = False
  pool = lambda f, b: prroi_pool_image(f, b, output_size=3, spatial_scale=0.25, valid=valid)  # noqa: E731
  out, (d_features, d_boxes) = jax.jit(lambda f, b: (pool(f, b), jax.grad(
      lambda f, b: jnp.sum(pool(f, b) ** 2), argnums=(0, 1))(f, b)))(features[0], boxes)
  np.testing.assert_array_equal(out[:4], 0.0)
  want, _ = numpy_prroi_pool(features[:1], boxes[4:], np.zeros(len(boxes) - 4, int), output_size=(3, 3),
                             spatial_scale=0.25)
  np.testing.assert_allclose(out[4:], want, rtol=2e-4, atol=2e-4)
  np.testing.assert_array_equal(d_boxes[:4], 0.0)
  assert np.all(np.isfinite(d_features)) and np.all(np.isfinite(d_boxes))


def test_multilevel_pools_each_box_on_its_own_level():
  rng = np.random.default_rng(5)
  strides = (4, 8, 16, 32)
  maps = [rng.normal(size=(128 // s, 128 // s, 4)).astype(np.float32) for s in strides]
  wh = np.exp(rng.uniform(np.log(6), np.log(120), (40, 2)))
  xy = rng.uniform(-10, 128, (40, 2)) - wh / 2
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  boxes[:3] = [[0, 4, 120, 128], [10, 0, 128, 118], [-20, -10, 110, 100]]  # level 5: sqrt(wh) >= 112
  levels = np.asarray(fpn_levels(boxes, canonical_size=56, min_level=2, max_level=5))
  assert set(levels) == {2, 3, 4, 5}  # the case covers every level
  cotangent = rng.normal(size=(40, 5, 5, 4)).astype(np.float32)

  @jax.jit
  def pool_and_vjp(maps, boxes):
    out, vjp = jax.vjp(lambda m, b: multilevel_prroi_pool(m, b, output_size=5, strides=strides, canonical_size=56),
                       maps, boxes)
    return (out,) + vjp(cotangent)

  got, d_maps, d_boxes = pool_and_vjp(maps, boxes)
  for level, stride, image, d_image in zip(range(2, 6), strides, maps, d_maps):
    mine = levels == level
    # Values and the feature gradient: the closed form (float64) on the box's own level only.
    want, operators = numpy_prroi_pool(image[None], boxes[mine], np.zeros(mine.sum(), int), output_size=(5, 5),
                                       spatial_scale=1 / stride)
    np.testing.assert_allclose(got[mine], want, rtol=2e-4, atol=2e-4)
    grad = sum(np.einsum("pi,qj,pqc->ijc", wy, wx, g / area[..., None])
               for (wy, wx, area), g in zip(operators, cotangent[mine]))
    np.testing.assert_allclose(d_image, grad, rtol=2e-4, atol=2e-4)
  # The box gradient: the single-level op's (checked against `prroi_pool` above) on each box's level.
  for level, stride, image in zip(range(2, 6), strides, maps):
    mine = levels == level
    _, vjp = jax.vjp(lambda b: prroi_pool_image(image, b, output_size=5, spatial_scale=1 / stride), boxes)
    np.testing.assert_allclose(d_boxes[mine], vjp(cotangent)[0][mine], rtol=2e-4, atol=2e-4)
