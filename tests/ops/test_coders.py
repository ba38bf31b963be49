"""Box coders: references, round trips and degenerate inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdet.ops import coders as C


def random_boxes(rng, n, scale=200.0, min_size=1.0):
  xy = rng.uniform(0, scale, (n, 2))
  wh = rng.uniform(min_size, scale, (n, 2))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def numpy_encode(gt, an, w):
  """torchvision BoxCoder.encode_single, transcribed."""
  aw, ah = an[:, 2] - an[:, 0], an[:, 3] - an[:, 1]
  ax, ay = an[:, 0] + 0.5 * aw, an[:, 1] + 0.5 * ah
  gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
  gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
  return np.stack([w[0] * (gx - ax) / aw, w[1] * (gy - ay) / ah, w[2] * np.log(gw / aw), w[3] * np.log(gh / ah)], 1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_faster_rcnn_encode_matches_reference(weights):
  rng = np.random.default_rng(0)
  gt, an = random_boxes(rng, 50), random_boxes(rng, 50)
  np.testing.assert_allclose(C.encode_boxes(gt, an, weights=weights), numpy_encode(gt, an, weights),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_faster_rcnn_matches_torchvision(weights):
  torch = pytest.importorskip("torch")
  det_utils = pytest.importorskip("torchvision.models.detection._utils")
  coder = det_utils.BoxCoder(weights)
  rng = np.random.default_rng(1)
  gt, an = random_boxes(rng, 64), random_boxes(rng, 64)
  ref = coder.encode_single(torch.from_numpy(gt), torch.from_numpy(an)).numpy()
  np.testing.assert_allclose(C.encode_boxes(gt, an, weights=weights), ref, rtol=1e-5, atol=1e-5)
  deltas = rng.normal(0, 2, (64, 4)).astype(np.float32)
  deltas[0, 2] = 50.0  # exercises the log(1000/16) clamp
  ref = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(an)).numpy()
  np.testing.assert_allclose(C.decode_boxes(deltas, an, weights=weights), ref, rtol=1e-5, atol=1e-3)


def test_decode_clamps_scale():
  an = jnp.array([[0.0, 0.0, 10.0, 10.0]])
  out = C.decode_boxes(jnp.array([[0.0, 0.0, 100.0, 100.0]]), an)
  np.testing.assert_allclose(out[0, 2] - out[0, 0], 10 * 1000 / 16, rtol=1e-5)


@given(st.integers(0, 10_000))
def test_faster_rcnn_round_trip(seed):
  rng = np.random.default_rng(seed)
  # Sizes within a factor 1000/16 of each other, so the scale clamp does not apply.
  gt, an = random_boxes(rng, 8, min_size=5.0), random_boxes(rng, 8, min_size=5.0)
  w = (10.0, 10.0, 5.0, 5.0)
  np.testing.assert_allclose(C.decode_boxes(C.encode_boxes(gt, an, weights=w), an, weights=w), gt,
                             rtol=1e-4, atol=2e-2)


def test_yolov1_round_trip_and_values():
  rng = np.random.default_rng(2)
  gt = random_boxes(rng, 30, scale=200)
  cells, t = C.encode_yolov1(gt, grid_size=(7, 7), image_size=(448, 448))
  assert np.all((np.asarray(t[:, :2]) >= 0) & (np.asarray(t[:, :2]) < 1.0 + 1e-6))
  np.testing.assert_allclose(C.decode_yolov1(t, cells, grid_size=(7, 7), image_size=(448, 448)), gt,
                             rtol=1e-4, atol=1e-2)
  cells, t = C.encode_yolov1(jnp.array([[64.0, 0.0, 128.0, 256.0]]), grid_size=(7, 7), image_size=(448, 448))
  np.testing.assert_array_equal(cells[0], [2, 1])  # centre (96, 128): column 96/64 = 1, row 128/64 = 2
  np.testing.assert_allclose(t[0], [0.5, 0.0, math.sqrt(64 / 448), math.sqrt(256 / 448)], rtol=1e-6)


def test_yolo_v2_decode_matches_course_code():
  """The course's Keras decoding: xy = (sigmoid + index) / dims, wh = exp * anchors / dims (grid units)."""
  rng = np.random.default_rng(3)
  raw = rng.normal(0, 1, (13, 13, 5, 4)).astype(np.float32)
  anchors_grid = rng.uniform(0.5, 8, (5, 2)).astype(np.float32)
  stride = 32.0
  ii, jj = np.meshgrid(np.arange(13), np.arange(13), indexing="ij")
  cells = np.broadcast_to(np.stack([ii, jj], -1)[:, :, None, :], (13, 13, 5, 2))
  index_xy = cells[..., ::-1]
  sig = 1 / (1 + np.exp(-raw[..., :2]))
  xy = (sig + index_xy) / 13
  wh = np.exp(raw[..., 2:]) * anchors_grid / 13
  ref = np.concatenate([xy - wh / 2, xy + wh / 2], -1) * 416
  out = C.decode_yolo(raw, anchors_grid * stride, cells, stride=stride)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


@given(st.integers(0, 10_000))
def test_yolo_round_trip(seed):
  rng = np.random.default_rng(seed)
  gt = random_boxes(rng, 8)
  anchors = rng.uniform(5, 100, (8, 2)).astype(np.float32)
  cells, t = C.encode_yolo(gt, anchors, stride=16.0)
  offsets = np.clip(np.asarray(t[:, :2]), 1e-4, 1 - 1e-4)
  raw = np.concatenate([np.log(offsets / (1 - offsets)), np.asarray(t[:, 2:])], -1)
  np.testing.assert_allclose(C.decode_yolo(raw, anchors, cells, stride=16.0), gt, rtol=1e-3, atol=2e-2)


@pytest.mark.parametrize("stride", [None, 8.0])
def test_ltrb_round_trip_and_sign(stride):
  rng = np.random.default_rng(4)
  gt = random_boxes(rng, 20)
  inside = np.stack([(gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2], -1)
  ltrb = C.encode_ltrb(gt, inside, stride=stride)
  assert np.all(np.asarray(ltrb) > 0)
  np.testing.assert_allclose(C.decode_ltrb(ltrb, inside, stride=stride), gt, rtol=1e-5, atol=1e-3)
  outside = inside + np.array([1000.0, 0.0], np.float32)
  assert np.all(np.asarray(C.encode_ltrb(gt, outside))[:, 2] < 0)


def test_centernet_round_trip_and_offsets():
  rng = np.random.default_rng(5)
  gt = random_boxes(rng, 20)
  cells, off, size = C.encode_centernet(gt, stride=4.0)
  assert np.all((np.asarray(off) >= 0) & (np.asarray(off) < 1))
  np.testing.assert_allclose(C.decode_centernet(cells, off, size, stride=4.0), gt, rtol=1e-5, atol=1e-3)
  cells, off, _ = C.encode_centernet(jnp.array([[8.0, 8.0, 12.0, 12.0]]), stride=4.0)  # centre (10, 10)
  np.testing.assert_array_equal(cells[0], [2, 2])
  np.testing.assert_allclose(off[0], [0.5, 0.5])  # the middle of cell 2, whose centre is (2 + 0.5) * 4 = 10


def test_degenerate_inputs_are_finite_with_finite_gradients():
  bad = jnp.array([[0, 0, 0, 0], [5, 5, 1, 1], [0, 0, jnp.nan, 3], [1, 1, 4, 4]], jnp.float32)
  anchors = jnp.array([[0, 0, 0, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], jnp.float32)
  f = lambda b, a: C.encode_boxes(b, a, weights=(10.0, 10.0, 5.0, 5.0))
  assert np.all(np.isfinite(f(bad, anchors)[np.array([0, 1, 3])]))
  for g in jax.grad(lambda b, a: jnp.nansum(f(b, a)), argnums=(0, 1))(bad, anchors):
    assert np.all(np.isfinite(g))
  g = jax.grad(lambda b: C.encode_yolov1(b, grid_size=(7, 7), image_size=(448, 448))[1].sum())(bad[:2])
  assert np.all(np.isfinite(g))
  g = jax.grad(lambda b: C.encode_yolo(b, jnp.ones((4, 2)), stride=8.0)[1].sum())(bad.at[2].set(0.0))
  assert np.all(np.isfinite(g))


@pytest.mark.parametrize("jit", [False, True])
def test_shapes_with_and_without_jit(jit):
  f = jax.jit(C.decode_boxes) if jit else C.decode_boxes
  out = f(jnp.zeros((2, 7, 4)), jnp.ones((2, 7, 4)) * jnp.array([0, 0, 4, 4.0]))
  assert out.shape == (2, 7, 4)
  np.testing.assert_allclose(out[0, 0], [0, 0, 4, 4])
