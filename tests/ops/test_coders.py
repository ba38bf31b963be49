"""Box coders: NumPy / torchvision / course references, round trips, gradients, degenerate inputs, jit."""

import functools
import math

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

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


@given(hnp.arrays(np.float32, (6, 4), elements=st.floats(0, 400, width=32)),
       st.sampled_from([(7, 7), (13, 20)]), st.sampled_from([4.0, 8.0, 32.0]))
def test_yolov1_ltrb_and_centernet_round_trips(raw, grid, stride):
  # Valid boxes inside a 448 x 640 image: a corner plus a size of at least 1 px.
  boxes = np.concatenate([raw[:, :2], raw[:, :2] + 1 + raw[:, 2:] / 4], axis=1)
  decoded = _round_trips(boxes, grid, stride)
  for name, back in decoded.items():
    np.testing.assert_allclose(back, boxes, rtol=1e-4, atol=2e-2, err_msg=name)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _round_trips(boxes, grid, stride):
  cells, t = C.encode_yolov1(boxes, grid_size=grid, image_size=(448, 640))
  points = (boxes[:, :2] + boxes[:, 2:]) / 2 + 0.25  # any point: l, t, r, b may be negative
  out = {"yolov1": C.decode_yolov1(t, cells, grid_size=grid, image_size=(448, 640)),
         "ltrb": C.decode_ltrb(C.encode_ltrb(boxes, points, stride=stride), points, stride=stride),
         "centernet": C.decode_centernet(*C.encode_centernet(boxes, stride=stride), stride=stride)}
  return out


def _every_coder(boxes, anchors, deltas):
  """One output vector from every differentiable encode / decode, so one compilation checks all gradients."""
  w = (10.0, 10.0, 5.0, 5.0)
  cells = jnp.array([[3, 4]] * boxes.shape[0])
  points = (anchors[:, :2] + anchors[:, 2:]) / 2
  parts = [C.encode_boxes(boxes, anchors, weights=w), C.decode_boxes(deltas, anchors, weights=w),
           C.encode_yolov1(boxes, grid_size=(7, 7), image_size=(448, 448))[1],
           C.decode_yolov1(jax.nn.sigmoid(deltas), cells, grid_size=(7, 7), image_size=(448, 448)),
           C.encode_yolo(boxes, anchors[:, 2:] - anchors[:, :2], stride=32.0)[1],
           C.decode_yolo(deltas, anchors[:, 2:] - anchors[:, :2], cells, stride=32.0),
           C.encode_ltrb(boxes, points, stride=8.0), C.decode_ltrb(deltas, points, stride=8.0),
           C.encode_centernet(boxes, stride=4.0)[1], C.encode_centernet(boxes, stride=4.0)[2],
           C.decode_centernet(cells, deltas[:, :2], deltas[:, 2:] + 20, stride=4.0)]
  return jnp.concatenate([p.ravel() for p in parts])


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(6)
  # Centres away from cell borders, where the cell index (a step function) would jump under the finite difference.
  boxes = jnp.array([[10.3, 20.6, 60.2, 90.4], [100.1, 30.2, 180.7, 75.9]], jnp.float32)
  anchors = jnp.array([[20.0, 15.0, 70.0, 80.0], [90.0, 40.0, 170.0, 80.0]], jnp.float32)
  deltas = jnp.asarray(rng.normal(0, 0.5, (2, 4)), jnp.float32)
  check_grads(jax.jit(_every_coder), (boxes, anchors, deltas), order=1, modes=["rev"], atol=5e-2, rtol=5e-2,
              eps=1e-2)


DEGENERATE = jnp.array([[0, 0, 0, 0], [5, 5, 1, 1], [0, 0, jnp.nan, 3], [0, 0, jnp.inf, 3], [-jnp.inf, 0, 4, 4]],
                       jnp.float32)


def test_degenerate_boxes_encode_to_zero_with_zero_finite_gradients():
  anchors = jnp.broadcast_to(jnp.array([0.0, 0.0, 10.0, 10.0]), DEGENERATE.shape)

  def encodings(b):
    return {"faster_rcnn": C.encode_boxes(b, anchors, weights=(10.0, 10.0, 5.0, 5.0)),
            "yolov1": C.encode_yolov1(b, grid_size=(7, 7), image_size=(448, 448)),
            "yolo": C.encode_yolo(b, jnp.ones((5, 2)), stride=8.0),
            "centernet": C.encode_centernet(b, stride=4.0)}

  for name, out in jax.jit(encodings)(DEGENERATE).items():
    for part in jax.tree.leaves(out):
      np.testing.assert_array_equal(part, 0, err_msg=name)  # targets 0, cell (0, 0)
  total = lambda b: sum(jnp.sum(p) for p in jax.tree.leaves(encodings(b)) if p.dtype == jnp.float32)
  grad = jax.jit(jax.grad(total))(DEGENERATE)
  np.testing.assert_array_equal(grad, 0)
  # A degenerate anchor: zero targets as well; FCOS distances to an empty box are finite, to a NaN box zero.
  np.testing.assert_array_equal(C.encode_boxes(anchors, DEGENERATE), 0)
  ltrb = C.encode_ltrb(DEGENERATE, jnp.array([2.0, 2.0]))
  np.testing.assert_allclose(ltrb[:2], [[2, 2, -2, -2], [-3, -3, -1, -1]])
  np.testing.assert_array_equal(ltrb[2:], 0)


def test_decoders_are_finite_for_any_anchor_and_clamp_the_scale():
  deltas = jnp.array([[0.5, -0.5, 100.0, 100.0]] * 5, jnp.float32)  # exp(100) would overflow without the clamp
  out = C.decode_boxes(deltas, DEGENERATE, weights=(10.0, 10.0, 5.0, 5.0))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[2:], 0)  # a NaN / inf anchor decodes as the empty box at the origin
  grads = jax.grad(lambda d, a: C.decode_boxes(d, a).sum(), argnums=(0, 1))(deltas, DEGENERATE)
  assert all(np.all(np.isfinite(g)) for g in grads)
  big = C.decode_yolo(jnp.array([[50.0, -50.0, 100.0, 100.0]]), jnp.array([[10.0, 20.0]]), jnp.array([[1, 2]]),
                      stride=16.0)
  assert np.all(np.isfinite(big))
  np.testing.assert_allclose(big[0, 2] - big[0, 0], 10 * 1000 / 16, rtol=1e-5)


class CodersVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_dtypes_and_round_trips(self):
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 2 * 6, scale=150.0).reshape(2, 6, 4)
    anchors = random_boxes(rng, 2 * 6, scale=150.0).reshape(2, 6, 4)

    @self.variant
    def coders(b, a):
      w = (10.0, 10.0, 5.0, 5.0)
      deltas = C.encode_boxes(b, a, weights=w)
      cells1, t1 = C.encode_yolov1(b, grid_size=(7, 7), image_size=(448, 448))
      cells2, t2 = C.encode_yolo(b, a[..., 2:] - a[..., :2], stride=16.0)
      ltrb = C.encode_ltrb(b, a[..., :2], stride=8.0)
      cells3, offsets, sizes = C.encode_centernet(b, stride=4.0)
      return {"deltas": deltas, "faster_rcnn": C.decode_boxes(deltas, a, weights=w),
              "cells": (cells1, cells2, cells3), "yolov1": C.decode_yolov1(t1, cells1, grid_size=(7, 7),
                                                                            image_size=(448, 448)),
              "t_yolo": t2, "ltrb": C.decode_ltrb(ltrb, a[..., :2], stride=8.0),
              "centernet": C.decode_centernet(cells3, offsets, sizes, stride=4.0)}

    out = coders(boxes, anchors)
    chex.assert_shape([out["deltas"], out["faster_rcnn"], out["yolov1"], out["t_yolo"], out["ltrb"],
                       out["centernet"]], (2, 6, 4))
    chex.assert_shape(list(out["cells"]), (2, 6, 2))
    chex.assert_type(list(out["cells"]), jnp.int32)
    chex.assert_type([out["deltas"], out["faster_rcnn"]], jnp.float32)
    for name in ("faster_rcnn", "yolov1", "ltrb", "centernet"):
      np.testing.assert_allclose(out[name], boxes, rtol=1e-4, atol=2e-2, err_msg=name)
    for k in range(2):
      np.testing.assert_allclose(out["deltas"][k], numpy_encode(boxes[k], anchors[k], (10, 10, 5, 5)), rtol=1e-4,
                                 atol=1e-4)


def test_corner_coder_is_the_kl_loss_parametrisation_and_round_trips():
  rng = np.random.default_rng(8)
  gt, an = random_boxes(rng, 40), random_boxes(rng, 40)
  w = (10.0, 10.0, 10.0, 10.0)
  aw, ah = an[:, 2] - an[:, 0], an[:, 3] - an[:, 1]
  want = 10 * (gt - an) / np.stack([aw, ah, aw, ah], 1)  # He et al. 2019, eq. 1, each side over the anchor's size
  np.testing.assert_allclose(C.encode_corners(gt, an, weights=w), want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(C.decode_corners(C.encode_corners(gt, an, weights=w), an, weights=w), gt, rtol=1e-5,
                             atol=1e-3)
  np.testing.assert_array_equal(C.encode_corners(DEGENERATE, jnp.broadcast_to(an[0], DEGENERATE.shape)), 0)
  grad = jax.grad(lambda b: jnp.sum(C.encode_corners(b, jnp.broadcast_to(an[0], b.shape))))(DEGENERATE)
  np.testing.assert_array_equal(grad, 0)
  assert np.all(np.isfinite(C.decode_corners(jnp.ones((5, 4)), DEGENERATE)))
