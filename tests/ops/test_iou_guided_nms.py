"""IoU-guided NMS against a NumPy loop transcription of IoU-Net's Algorithm 1."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.iou_guided_nms import iou_guided_nms
from tests.ops.nms_reference import (compiled_temp_bytes, detector_boxes, iou_guided_np, largest_intermediate_bytes,
                                     random_boxes)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_equal_to_paper_algorithm(threshold):
  rng = np.random.default_rng(int(threshold * 10))
  boxes, scores = detector_boxes(rng, 80, num_objects=6, size=150.0)
  loc = rng.uniform(size=80).astype(np.float32)
  fn = jax.jit(functools.partial(iou_guided_nms, iou_threshold=threshold, max_outputs=80))
  idx, out, valid = fn(boxes, scores, loc)
  want_idx, want_scores = iou_guided_np(boxes.astype(np.float64), scores, loc, threshold)
  valid = np.asarray(valid)
  assert np.all(valid[:valid.sum()])
  assert np.asarray(idx)[valid].tolist() == want_idx
  np.testing.assert_array_equal(np.asarray(out)[valid], np.float32(want_scores))
  assert np.all(np.asarray(out)[~valid] == 0)


def test_keeps_best_localised_box_with_best_classification_score():
  boxes = jnp.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10], [30, 30, 40, 40]], jnp.float32)
  idx, out, valid = iou_guided_nms(boxes, jnp.array([0.9, 0.6, 0.3]), jnp.array([0.7, 0.95, 0.5]),
                                   iou_threshold=0.5, max_outputs=3)
  np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], [1, 2])
  np.testing.assert_allclose(np.asarray(out)[np.asarray(valid)], [0.9, 0.3])


class IouGuidedNmsVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_nan_inf_and_degenerate_inputs(self):
    boxes = jnp.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, jnp.nan, 1], [0, 0, 10, 10], [3, 3, 3, 3]],
                      jnp.float32)
    scores = jnp.array([0.5, 0.9, 0.99, jnp.inf, 0.2])
    loc = jnp.array([0.8, 0.6, 0.99, 0.99, jnp.nan])
    fn = self.variant(functools.partial(iou_guided_nms, iou_threshold=0.5, max_outputs=5))
    idx, out, valid = fn(boxes, scores, loc)
    chex.assert_shape([idx, out, valid], (5,))
    # Boxes 2-4 have a non-finite input and are never selected nor absorbed; box 0 absorbs box 1's score.
    assert np.asarray(idx)[np.asarray(valid)].tolist() == [0]
    np.testing.assert_allclose(np.asarray(out), [0.9, 0, 0, 0, 0])
    assert not np.any(fn(boxes[:0], scores[:0], loc[:0])[2])


def test_vmap_over_images_equals_per_image_calls():
  rng = np.random.default_rng(3)
  boxes = np.stack([random_boxes(rng, 50, size=80.0) for _ in range(3)])
  scores, loc = rng.uniform(size=(2, 3, 50)).astype(np.float32)
  fn = functools.partial(iou_guided_nms, iou_threshold=0.5, max_outputs=50)
  got = jax.jit(jax.vmap(fn))(boxes, scores, loc)
  for i in range(3):
    for g, w in zip(got, jax.jit(fn)(boxes[i], scores[i], loc[i])):
      np.testing.assert_array_equal(g[i], w)


def test_memory_stays_linear_for_20000_boxes():
  shapes = (jax.ShapeDtypeStruct((20000, 4), jnp.float32), jax.ShapeDtypeStruct((20000,), jnp.float32),
            jax.ShapeDtypeStruct((20000,), jnp.float32))
  fn = functools.partial(iou_guided_nms, iou_threshold=0.5, max_outputs=20000)
  assert largest_intermediate_bytes(fn, *shapes) < 2**20
  assert compiled_temp_bytes(fn, *shapes) < 4 * 2**20
