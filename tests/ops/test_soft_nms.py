"""Soft-NMS, Softer-NMS variance voting and IoU-guided NMS against loop transcriptions of the papers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.iou_guided_nms import iou_guided_nms
from jaxdet.ops.nms import nms
from jaxdet.ops.soft_nms import soft_nms
from jaxdet.ops.softer_nms import variance_voting
from tests.ops.nms_reference import iou_guided_np, iou_np, random_boxes, soft_nms_np


@pytest.mark.parametrize("method,sigma,nt", [("gaussian", 0.5, 0.3), ("linear", 0.5, 0.3), ("linear", 0.5, 0.6)])
def test_soft_nms_equal_to_paper_algorithm(method, sigma, nt):
  rng = np.random.default_rng(0)
  boxes = random_boxes(rng, 80, size=100.0)
  scores = rng.uniform(size=80).astype(np.float32)
  fn = jax.jit(lambda b, s: soft_nms(b, s, method=method, sigma=sigma, iou_threshold=nt, score_threshold=0.001,
                                     max_outputs=80))
  idx, out, valid = fn(boxes, scores)
  want_idx, want_scores = soft_nms_np(boxes.astype(np.float64), scores, method, sigma, nt, 0.001)
  valid = np.asarray(valid)
  assert np.asarray(idx)[valid].tolist() == want_idx
  np.testing.assert_allclose(np.asarray(out)[valid], want_scores, rtol=2e-5, atol=1e-6)


def test_soft_nms_decays_instead_of_removing():
  boxes = jnp.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], jnp.float32)
  scores = jnp.array([0.9, 0.8, 0.7])
  idx, out, valid = soft_nms(boxes, scores, method="linear", iou_threshold=0.3, max_outputs=3)
  iou = 90.0 / 110.0
  np.testing.assert_array_equal(np.asarray(idx), [0, 2, 1])
  np.testing.assert_allclose(np.asarray(out), [0.9, 0.7, 0.8 * (1 - iou)], rtol=1e-6)
  assert np.all(valid)
  # Hard NMS at the same threshold would have removed box 1 entirely.
  assert int(nms(boxes, scores, iou_threshold=0.3, max_outputs=3)[1].sum()) == 2


def test_soft_nms_prunes_below_threshold_and_ignores_nan():
  boxes = jnp.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 1, 1]], jnp.float32)
  scores = jnp.array([0.9, 0.5, jnp.nan, 0.0005])
  idx, out, valid = soft_nms(boxes, scores, method="gaussian", sigma=0.01, max_outputs=4)
  assert np.asarray(idx)[np.asarray(valid)].tolist() == [0]  # box 1 decays to 0.5 * e^-100, box 3 starts too low
  assert np.all(np.isfinite(np.asarray(out)))


def _voting_np(boxes, var, kept, sigma_t):
  out = []
  for k in kept:
    num, den = np.zeros(4), np.zeros(4)
    for i in range(len(boxes)):
      ov = iou_np(boxes[k], boxes[i])
      if ov > 0:
        p = np.exp(-(1 - ov) ** 2 / sigma_t)
        num += p * boxes[i] / var[i]
        den += p / var[i]
    out.append(num / den)
  return np.array(out)


def test_variance_voting_equal_to_loop_reference():
  rng = np.random.default_rng(1)
  centre = random_boxes(rng, 5, size=200.0, max_wh=50.0)
  boxes = np.concatenate([centre + rng.normal(0, 3, (5, 4)) for _ in range(8)]).astype(np.float32)
  var = np.exp(rng.normal(0, 1, boxes.shape)).astype(np.float32)
  scores = rng.uniform(size=len(boxes)).astype(np.float32)
  idx, valid = nms(boxes, scores, iou_threshold=0.5, max_outputs=10)
  kept = np.asarray(idx)[np.asarray(valid)]
  got = jax.jit(lambda b, v, k: variance_voting(b, v, k, sigma_t=0.05))(boxes, var, kept)
  np.testing.assert_allclose(np.asarray(got), _voting_np(boxes.astype(np.float64), var, kept, 0.05), rtol=1e-5,
                             atol=1e-3)


def test_variance_voting_trusts_confident_coordinates_and_respects_classes():
  boxes = jnp.array([[0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 10]], jnp.float32)
  confident = jnp.array([[1.0] * 4, [1e-4] * 4, [1.0] * 4])
  voted = variance_voting(boxes, confident, jnp.array([0]), sigma_t=1.0, classes=jnp.array([0, 0, 1]))
  np.testing.assert_allclose(np.asarray(voted[0]), [2, 0, 12, 10], atol=0.01)  # the confident neighbour wins
  alone = variance_voting(boxes, confident, jnp.array([0]), sigma_t=1.0, classes=jnp.array([0, 1, 1]))
  np.testing.assert_allclose(np.asarray(alone[0]), [0, 0, 10, 10], atol=1e-6)


def test_variance_voting_gradients_and_bad_variances_are_finite():
  boxes = jnp.array([[0, 0, 10, 10], [1, 1, 11, 11], [jnp.nan, 0, 1, 1]], jnp.float32)
  var = jnp.array([[1.0] * 4, [0.5] * 4, [0.0] * 4])
  voted = variance_voting(boxes, var, jnp.array([0, 1]), kept_valid=jnp.array([True, False]))
  assert np.all(np.isfinite(np.asarray(voted)))
  np.testing.assert_array_equal(np.asarray(voted[1]), [1, 1, 11, 11])
  grad = jax.grad(lambda v: variance_voting(boxes, v, jnp.array([0])).sum())(var)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_iou_guided_nms_equal_to_paper_algorithm():
  rng = np.random.default_rng(2)
  boxes = random_boxes(rng, 60, size=80.0)
  scores = rng.uniform(size=60).astype(np.float32)
  loc = rng.uniform(size=60).astype(np.float32)
  idx, out, valid = jax.jit(lambda b, s, l: iou_guided_nms(b, s, l, iou_threshold=0.5, max_outputs=60))(
      boxes, scores, loc)
  want_idx, want_scores = iou_guided_np(boxes.astype(np.float64), scores, loc, 0.5)
  valid = np.asarray(valid)
  assert np.asarray(idx)[valid].tolist() == want_idx
  np.testing.assert_allclose(np.asarray(out)[valid], want_scores, rtol=1e-6)


def test_iou_guided_nms_keeps_best_localised_box_with_best_score():
  boxes = jnp.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10], [30, 30, 40, 40]], jnp.float32)
  idx, out, valid = iou_guided_nms(boxes, jnp.array([0.9, 0.6, 0.3]), jnp.array([0.7, 0.95, 0.5]),
                                   iou_threshold=0.5, max_outputs=3)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], [1, 2])
  np.testing.assert_allclose(np.asarray(out)[np.asarray(valid)], [0.9, 0.3])
