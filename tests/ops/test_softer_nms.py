"""Softer-NMS variance voting against a NumPy loop transcription of the KL-Loss paper's Algorithm 1."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np

from jaxdet.ops.nms import nms
from jaxdet.ops.softer_nms import variance_voting
from tests.ops.nms_reference import compiled_temp_bytes, iou_np, largest_intermediate_bytes, random_boxes


def _voting_np(boxes, var, kept, sigma_t, classes=None):
  out = []
  for k in kept:
    num, den = np.zeros(4), np.zeros(4)
    for i in range(len(boxes)):
      ov = iou_np(boxes[k], boxes[i])
      if ov > 0 and (classes is None or classes[i] == classes[k]):
        p = np.exp(-(1 - ov) ** 2 / sigma_t)
        num += p * boxes[i] / var[i]
        den += p / var[i]
    out.append(num / den)
  return np.array(out)


def _clusters(rng, num_objects=5, copies=8):
  centre = random_boxes(rng, num_objects, size=200.0, max_wh=50.0)
  boxes = np.concatenate([centre + rng.normal(0, 3, (num_objects, 4)) for _ in range(copies)]).astype(np.float32)
  boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
  var = np.exp(rng.normal(0, 1, boxes.shape)).astype(np.float32)
  return boxes, var, rng.uniform(size=len(boxes)).astype(np.float32)


def test_equal_to_loop_reference():
  rng = np.random.default_rng(1)
  boxes, var, _ = _clusters(rng, num_objects=6, copies=10)  # 60 boxes: several blocks of kept boxes
  kept = np.arange(0, 60, 2)  # 30 kept boxes: two blocks of 16, the second one partial
  classes = rng.integers(0, 2, 60)
  fn = jax.jit(functools.partial(variance_voting, sigma_t=0.05))
  np.testing.assert_allclose(np.asarray(fn(boxes, var, kept)), _voting_np(boxes, var, kept, 0.05), rtol=1e-5,
                             atol=1e-3)
  np.testing.assert_allclose(np.asarray(fn(boxes, var, kept, classes=classes)),
                             _voting_np(boxes, var, kept, 0.05, classes), rtol=1e-5, atol=1e-3)


def test_after_nms_moves_kept_boxes_towards_confident_neighbours():
  rng = np.random.default_rng(2)
  boxes, var, scores = _clusters(rng)
  idx, valid = jax.jit(functools.partial(nms, iou_threshold=0.5, max_outputs=10))(boxes, scores)
  got = jax.jit(functools.partial(variance_voting, sigma_t=0.02))(boxes, var, idx, kept_valid=valid)
  kept = np.asarray(idx)[np.asarray(valid)]
  np.testing.assert_allclose(np.asarray(got)[np.asarray(valid)], _voting_np(boxes, var, kept, 0.02), rtol=1e-5,
                             atol=1e-3)
  np.testing.assert_array_equal(np.asarray(got)[~np.asarray(valid)], boxes[np.asarray(idx)[~np.asarray(valid)]])


def test_trusts_confident_coordinates_and_respects_classes():
  boxes = jnp.array([[0, 0, 10, 10], [2, 0, 12, 10], [0, 0, 10, 10]], jnp.float32)
  confident = jnp.array([[1.0] * 4, [1e-4] * 4, [1.0] * 4])
  voted = variance_voting(boxes, confident, jnp.array([0]), sigma_t=1.0, classes=jnp.array([0, 0, 1]))
  np.testing.assert_allclose(np.asarray(voted[0]), [2, 0, 12, 10], atol=0.01)  # the confident neighbour wins
  alone = variance_voting(boxes, confident, jnp.array([0]), sigma_t=1.0, classes=jnp.array([0, 1, 1]))
  np.testing.assert_allclose(np.asarray(alone[0]), [0, 0, 10, 10], atol=1e-6)


BAD_BOXES = jnp.array([[0, 0, 10, 10], [1, 1, 11, 11], [jnp.nan, 0, 1, 1], [2, 2, 12, 12], [4, 4, 4, 9]],
                      jnp.float32)
BAD_VARIANCES = jnp.array([[1.0] * 4, [0.5] * 4, [0.0] * 4, [jnp.inf] * 4, [1.0] * 4])


class VarianceVotingVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_bad_boxes_and_variances_give_finite_values(self):
    fn = self.variant(functools.partial(variance_voting, kept_valid=jnp.array([True, False, True, True])))
    voted = fn(BAD_BOXES, BAD_VARIANCES, jnp.array([0, 1, 2, 4]))
    chex.assert_shape(voted, (4, 4))
    assert np.all(np.isfinite(np.asarray(voted)))
    np.testing.assert_array_equal(np.asarray(voted[1]), [1, 1, 11, 11])  # invalid slot: unchanged
    np.testing.assert_array_equal(np.asarray(voted[2:]), [[0, 0, 0, 0], [4, 4, 4, 9]])  # no voters: as is
    assert self.variant(variance_voting)(BAD_BOXES, BAD_VARIANCES, jnp.zeros((0,), jnp.int32)).shape == (0, 4)


def test_bad_boxes_and_variances_give_finite_gradients():
  loss = lambda b, v: variance_voting(b, v, jnp.array([0, 1, 2, 4])).sum()
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(BAD_BOXES, BAD_VARIANCES)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
  assert np.any(np.asarray(grads[1]) != 0)


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(3)
  boxes, var, _ = _clusters(rng, num_objects=2, copies=3)
  boxes, var = jnp.asarray(boxes, jnp.float32), jnp.asarray(var, jnp.float32)
  fn = jax.jit(lambda b, v: variance_voting(b, v, jnp.array([0, 1]), sigma_t=0.5))
  check_grads(fn, (boxes, var), order=1, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-2)


def test_vmap_over_images_equals_per_image_calls():
  rng = np.random.default_rng(4)
  batch = [_clusters(rng) for _ in range(3)]
  boxes, var = np.stack([b for b, _, _ in batch]), np.stack([v for _, v, _ in batch])
  kept = rng.integers(0, 40, (3, 7)).astype(np.int32)
  got = jax.jit(jax.vmap(variance_voting))(boxes, var, kept)
  for i in range(3):
    np.testing.assert_allclose(got[i], variance_voting(boxes[i], var[i], kept[i]), rtol=1e-6)


def test_memory_stays_linear_for_20000_boxes():
  # 20,000 kept boxes x 20,000 candidates: K x N weights would be 1.6 GB (x4 per coordinate).
  shapes = (jax.ShapeDtypeStruct((20000, 4), jnp.float32), jax.ShapeDtypeStruct((20000, 4), jnp.float32),
            jax.ShapeDtypeStruct((20000,), jnp.int32))
  assert largest_intermediate_bytes(variance_voting, *shapes) < 4 * 2**20
  assert compiled_temp_bytes(variance_voting, *shapes) < 4 * 2**20
