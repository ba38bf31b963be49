"""Box formats and elementary geometry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdet.ops import boxes as B


def _random_boxes(rng, n, scale=100.0):
  xy = rng.uniform(0, scale, (n, 2))
  wh = rng.uniform(0.5, scale / 2, (n, 2))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


@pytest.mark.parametrize("fwd,inv", [(B.xyxy_to_xywh, B.xywh_to_xyxy), (B.xyxy_to_cxcywh, B.cxcywh_to_xyxy)])
def test_format_round_trip(fwd, inv):
  boxes = _random_boxes(np.random.default_rng(0), 64)
  np.testing.assert_allclose(inv(fwd(boxes)), boxes, rtol=1e-5, atol=1e-4)


def test_formats_against_numpy():
  b = np.array([[10.0, 20.0, 40.0, 60.0]], np.float32)
  np.testing.assert_allclose(B.xyxy_to_xywh(b), [[10, 20, 30, 40]])
  np.testing.assert_allclose(B.xyxy_to_cxcywh(b), [[25, 40, 30, 40]])


def test_area_and_validity_of_degenerate_boxes():
  b = jnp.array([[0, 0, 2, 3], [0, 0, 0, 3], [5, 5, 1, 1], [0, 0, jnp.nan, 1], [0, 0, jnp.inf, 1]], jnp.float32)
  np.testing.assert_array_equal(B.is_valid_box(b), [True, False, False, False, False])
  np.testing.assert_array_equal(B.box_area(b), [6, 0, 0, 0, 0])
  grad = jax.grad(lambda x: B.box_area(x).sum())(b)
  assert np.all(np.isfinite(grad))


def test_clip_scale_flip():
  b = jnp.array([[-5.0, 2.0, 120.0, 50.0]])
  np.testing.assert_allclose(B.clip_boxes(b, height=40, width=100), [[0, 2, 100, 40]])
  np.testing.assert_allclose(B.scale_boxes(b, sx=2.0, sy=0.5), [[-10, 1, 240, 25]])
  np.testing.assert_allclose(B.flip_boxes(jnp.array([[10.0, 1, 30, 2]]), width=100), [[70, 1, 90, 2]])


def test_flip_matches_pixel_mirror():
  # A box covering pixel columns [3, 7) of a 10-wide image covers columns [3, 7) of the mirrored image's
  # reversed index, i.e. columns 10-7..10-3.
  image = np.zeros((4, 10), bool)
  image[:, 3:7] = True
  mirrored = image[:, ::-1]
  cols = np.nonzero(mirrored[0])[0]
  flipped = np.asarray(B.flip_boxes(jnp.array([3.0, 0, 7, 4]), width=10))
  assert (flipped[0], flipped[2]) == (cols.min(), cols.max() + 1)


@given(st.integers(1, 5), st.floats(1, 500))
def test_flip_is_an_involution(n, width):
  boxes = _random_boxes(np.random.default_rng(n), n)
  np.testing.assert_allclose(B.flip_boxes(B.flip_boxes(boxes, width=width), width=width), boxes, atol=1e-3)


@pytest.mark.parametrize("jit", [False, True])
def test_batched_shapes_and_traced_sizes(jit):
  def f(b, h, w):
    return B.clip_boxes(b, height=h, width=w)
  f = jax.jit(jax.vmap(f)) if jit else jax.vmap(f)
  out = f(jnp.ones((3, 5, 4)) * 50, jnp.array([10.0, 20, 30]), jnp.array([5.0, 60, 70]))
  chex.assert_shape(out, (3, 5, 4))
  np.testing.assert_allclose(out[0, 0], [5, 10, 5, 10])
