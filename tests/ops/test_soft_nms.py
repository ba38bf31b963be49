"""Soft-NMS against a NumPy loop transcription of the paper's Algorithm 1."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.nms import nms
from jaxdet.ops.soft_nms import soft_nms
from tests.ops.nms_reference import (compiled_temp_bytes, detector_boxes, largest_intermediate_bytes,
                                     random_boxes, soft_nms_np)


@pytest.mark.parametrize("method,sigma,nt", [("gaussian", 0.5, 0.3), ("gaussian", 0.1, 0.3), ("linear", 0.5, 0.3),
                                             ("linear", 0.5, 0.6)])
def test_equal_to_paper_algorithm(method, sigma, nt):
  rng = np.random.default_rng(0)
  boxes, scores = detector_boxes(rng, 80, num_objects=6, size=150.0)
  fn = jax.jit(functools.partial(soft_nms, method=method, sigma=sigma, iou_threshold=nt, score_threshold=0.001,
                                 max_outputs=80))
  idx, out, valid = fn(boxes, scores)
  want_idx, want_scores = soft_nms_np(boxes.astype(np.float64), scores, method, sigma, nt, 0.001)
  valid = np.asarray(valid)
  assert np.all(valid[:valid.sum()])
  assert np.asarray(idx)[valid].tolist() == want_idx
  np.testing.assert_allclose(np.asarray(out)[valid], want_scores, rtol=2e-5, atol=1e-6)
  assert np.all(np.asarray(out)[~valid] == 0) and np.all(np.asarray(idx)[~valid] == 0)


def test_decays_instead_of_removing():
  boxes = jnp.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], jnp.float32)
  scores = jnp.array([0.9, 0.8, 0.7])
  idx, out, valid = soft_nms(boxes, scores, method="linear", iou_threshold=0.3, max_outputs=3)
  iou = 90.0 / 110.0
  np.testing.assert_array_equal(np.asarray(idx), [0, 2, 1])
  np.testing.assert_allclose(np.asarray(out), [0.9, 0.7, 0.8 * (1 - iou)], rtol=1e-6)
  assert np.all(valid)
  # Hard NMS at the same threshold removes box 1 entirely.
  assert int(nms(boxes, scores, iou_threshold=0.3, max_outputs=3)[1].sum()) == 2


def test_max_outputs_cuts_the_selection_order():
  rng = np.random.default_rng(1)
  boxes, scores = random_boxes(rng, 40, size=80.0), rng.uniform(size=40).astype(np.float32)
  want_idx, want_scores = soft_nms_np(boxes.astype(np.float64), scores, "gaussian", 0.5, 0.3, 0.001)
  idx, out, valid = jax.jit(functools.partial(soft_nms, max_outputs=5))(boxes, scores)
  assert np.all(valid) and np.asarray(idx).tolist() == want_idx[:5]
  np.testing.assert_allclose(np.asarray(out), want_scores[:5], rtol=2e-5)


class SoftNmsVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_prunes_below_threshold_and_ignores_nan_inf_degenerate(self):
    boxes = jnp.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 1, 1], [0, 0, jnp.inf, 5],
                       [5, 5, 5, 9]], jnp.float32)
    scores = jnp.array([0.9, 0.5, jnp.nan, 0.0005, 0.95, 0.6])
    fn = self.variant(functools.partial(soft_nms, method="gaussian", sigma=0.01, max_outputs=6))
    idx, out, valid = fn(boxes, scores)
    chex.assert_shape([idx, out, valid], (6,))
    # Box 1 decays to 0.5 e^-100, box 3 starts below 0.001, NaN / inf never count; the empty box 5 is kept as is.
    assert np.asarray(idx)[np.asarray(valid)].tolist() == [0, 5]
    np.testing.assert_allclose(np.asarray(out)[:2], [0.9, 0.6])
    assert np.all(np.isfinite(np.asarray(out)))
    idx, out, valid = fn(boxes[:0], scores[:0])
    assert not np.any(valid)


def test_vmap_over_images_equals_per_image_calls():
  rng = np.random.default_rng(2)
  batch = [detector_boxes(rng, 60, num_objects=5, size=150.0) for _ in range(3)]
  boxes, scores = np.stack([b for b, _ in batch]), np.stack([s for _, s in batch])
  fn = functools.partial(soft_nms, method="linear", max_outputs=60)
  got = jax.jit(jax.vmap(fn))(boxes, scores)
  for i in range(3):
    for g, w in zip(got, jax.jit(fn)(boxes[i], scores[i])):
      np.testing.assert_array_equal(g[i], w)


def test_memory_stays_linear_for_20000_boxes():
  shapes = jax.ShapeDtypeStruct((20000, 4), jnp.float32), jax.ShapeDtypeStruct((20000,), jnp.float32)
  fn = functools.partial(soft_nms, max_outputs=20000)
  assert largest_intermediate_bytes(fn, *shapes) < 2**20
  assert compiled_temp_bytes(fn, *shapes) < 4 * 2**20
