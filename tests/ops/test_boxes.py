"""Box formats and elementary geometry: NumPy definitions, round trips, degenerate boxes, gradients, jit."""

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

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


def numpy_area(boxes):
  """Area by the definition: positive finite sides multiply, anything else is 0."""
  out = np.zeros(len(boxes))
  for k, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
    if np.all(np.isfinite([x1, y1, x2, y2])) and x2 > x1 and y2 > y1:
      out[k] = (x2 - x1) * (y2 - y1)
  return out


SPECIAL = [0.0, -1.0, 3.0, np.nan, np.inf, -np.inf]
box_rows = hnp.arrays(np.float32, (6, 4), elements=st.one_of(st.floats(-200, 200, width=32), st.sampled_from(SPECIAL)))
_area_and_grad = jax.jit(lambda b: (B.box_area(b), jax.grad(lambda x: B.box_area(x).sum())(b)))
_round_trips = jax.jit(lambda b: (B.xywh_to_xyxy(B.xyxy_to_xywh(b)), B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(b))))


@given(box_rows)
def test_area_matches_definition_and_is_finite_for_any_box(boxes):
  area, grad = _area_and_grad(boxes)
  np.testing.assert_allclose(area, numpy_area(boxes), rtol=1e-6)
  assert np.all(np.isfinite(area)) and np.all(np.isfinite(grad))
  np.testing.assert_array_equal(np.asarray(B.is_valid_box(boxes)), numpy_area(boxes) > 0)


@given(hnp.arrays(np.float32, (5, 4), elements=st.floats(-1e3, 1e3, width=32)))
def test_format_round_trips_are_identities(boxes):
  for back in _round_trips(boxes):
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-3)


def test_clip_against_numpy_and_inf_becomes_finite():
  rng = np.random.default_rng(7)
  boxes = rng.uniform(-50, 150, (20, 4)).astype(np.float32)
  want = np.stack([np.clip(boxes[:, 0], 0, 100), np.clip(boxes[:, 1], 0, 60),
                   np.clip(boxes[:, 2], 0, 100), np.clip(boxes[:, 3], 0, 60)], -1)
  np.testing.assert_allclose(B.clip_boxes(boxes, height=60, width=100), want)
  inf = B.clip_boxes(jnp.array([[-jnp.inf, 5.0, jnp.inf, jnp.inf]]), height=60, width=100)
  np.testing.assert_array_equal(inf, [[0, 5, 100, 60]])


@pytest.mark.parametrize("fn", [B.xyxy_to_xywh, B.xywh_to_xyxy, B.xyxy_to_cxcywh, B.cxcywh_to_xyxy, B.box_area,
                                lambda b: B.scale_boxes(b, sx=1.5, sy=0.25), lambda b: B.flip_boxes(b, width=90.0),
                                lambda b: B.clip_boxes(b, height=80.0, width=90.0)])
def test_gradients_match_finite_differences(fn):
  # Boxes strictly inside the image, so clip is differentiable at them.
  boxes = jnp.asarray(_random_boxes(np.random.default_rng(8), 3, scale=40.0))
  check_grads(fn, (boxes,), order=1, modes=["fwd", "rev"], atol=1e-2, rtol=1e-2, eps=1e-2)


class BoxesVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_values_and_dtype_with_and_without_jit(self):
    boxes = jnp.asarray(_random_boxes(np.random.default_rng(9), 2 * 7).reshape(2, 7, 4), jnp.bfloat16)

    @self.variant
    def all_ops(b):
      return (B.xyxy_to_xywh(b), B.xyxy_to_cxcywh(b), B.box_area(b), B.is_valid_box(b),
              B.scale_boxes(b, sx=2.0, sy=3.0), B.flip_boxes(b, width=100.0))

    xywh, cxcywh, area, valid, scaled, flipped = all_ops(boxes)
    chex.assert_shape([xywh, cxcywh, scaled, flipped], (2, 7, 4))
    chex.assert_shape([area, valid], (2, 7))
    chex.assert_type([xywh, cxcywh, area, scaled, flipped], jnp.float32)  # geometry in float32 under bf16
    b = np.asarray(boxes, np.float64)
    np.testing.assert_allclose(area, (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]), rtol=1e-5)
    np.testing.assert_allclose(scaled, b * [2, 3, 2, 3], rtol=1e-6)
    np.testing.assert_allclose(flipped[..., 0], 100 - b[..., 2], rtol=1e-6)
