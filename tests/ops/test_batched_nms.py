"""Class-aware NMS against a per-class NumPy reference and torchvision, and where the coordinate offset trick fails.

Both algorithms, "tiled" (the CPU default) and "bitmask" (the default on other backends), forced with `algorithm`.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxdet.ops.nms import DEFAULT_CHUNK, DEFAULT_SWEEP, DEFAULT_TILE, batched_nms
from tests.ops.nms_reference import (detector_boxes, greedy_nms, largest_intermediate_bytes, offset_trick_nms,
                                     random_boxes)

SMALL = (8, 16, 8)  # tile, chunk, sweep: a few hundred boxes sweep and compact inside class segments many times
DEFAULT = (DEFAULT_TILE, DEFAULT_CHUNK, DEFAULT_SWEEP)
PADDED = 512
ALGORITHMS = ("tiled", "bitmask")


@functools.partial(jax.jit, static_argnames=("max_outputs", "sizes", "algorithm"))
def _jit_batched_nms(boxes, scores, classes, threshold, *, max_outputs, sizes, algorithm):
  tile, chunk, sweep = sizes
  return batched_nms(boxes, scores, classes, iou_threshold=threshold, max_outputs=max_outputs, algorithm=algorithm,
                     tile_size=tile, chunk_size=chunk, sweep_size=sweep)


def _batched_nms(boxes, scores, classes, threshold, sizes=DEFAULT, max_outputs=PADDED, *, algorithm):
  """Kept indices; inputs padded to 512 boxes with -inf scores and a traced float32-exact threshold, so that one
  compilation per `sizes` serves every test."""
  n = len(scores)
  boxes = np.concatenate([boxes, np.zeros((PADDED - n, 4), np.float32)])
  scores = np.concatenate([scores, np.full((PADDED - n,), -np.inf, np.float32)])
  classes = np.concatenate([classes, np.zeros((PADDED - n,), np.int32)])
  idx, valid = _jit_batched_nms(boxes, scores, classes, np.float32(threshold), max_outputs=max_outputs,
                                sizes=sizes, algorithm=algorithm)
  return _kept(idx, valid)


def _kept(idx, valid):
  idx, valid = np.asarray(idx), np.asarray(valid)
  assert np.all(idx[~valid] == 0) and np.all(valid[:valid.sum()])
  return idx[valid].tolist()


def _f32(threshold):
  return float(np.float32(threshold))


def _torchvision_batched_nms(boxes, scores, classes, threshold):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  return torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                     torch.from_numpy(classes.astype(np.int64)), threshold).numpy().tolist()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("threshold", map(_f32, [0.0, 0.3, 0.5, 0.7, 1.0]))
@pytest.mark.parametrize("num_classes", [1, 3, 40])
def test_equal_to_per_class_reference(threshold, num_classes, algorithm):
  rng = np.random.default_rng(num_classes)
  boxes, scores = detector_boxes(rng, 400)
  classes = rng.integers(0, num_classes, 400).astype(np.int32)
  want = greedy_nms(boxes, scores, threshold, classes)
  assert _batched_nms(boxes, scores, classes, threshold, SMALL, algorithm=algorithm) == want
  assert _batched_nms(boxes, scores, classes, threshold, algorithm=algorithm) == want


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_equal_to_torchvision(threshold, algorithm):
  rng = np.random.default_rng(11)
  boxes, scores = detector_boxes(rng, 480)
  classes = rng.integers(0, 6, 480).astype(np.int32)
  want = _torchvision_batched_nms(boxes, scores, classes, threshold)  # <= 1,000 boxes: the offset trick
  assert _batched_nms(boxes, scores, classes, _f32(threshold), SMALL, algorithm=algorithm) == want


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_equal_to_torchvision_above_its_per_class_loop_switch(algorithm):
  # Over 1,000 boxes torchvision's CPU batched_nms runs nms class by class and merges with an unstable sort, so
  # scores here are distinct.
  rng = np.random.default_rng(12)
  boxes, scores = detector_boxes(rng, 1500, num_objects=30)
  scores = rng.permutation(1500).astype(np.float32) / 1500
  classes = rng.integers(0, 20, 1500).astype(np.int32)
  got = _kept(*jax.jit(functools.partial(batched_nms, iou_threshold=0.5, max_outputs=1500, algorithm=algorithm))(
      boxes, scores, classes))
  assert got == greedy_nms(boxes, scores, 0.5, classes)
  assert got == _torchvision_batched_nms(boxes, scores, classes, 0.5)


def _borderline_pairs(rng, num_classes, size):
  """One pair of boxes per class at IoU 0.5 +- 0.0025 (a shift of a third of the width), spread over the image."""
  w = rng.uniform(50, 100, num_classes)
  x = rng.uniform(0, size - 200, num_classes)
  y = rng.uniform(0, size - 100, num_classes)
  shift = w / 3 * (1 + rng.uniform(-0.01, 0.01, num_classes))
  first = np.stack([x, y, x + w, y + w], axis=1)
  second = first + np.stack([shift, 0 * shift, shift, 0 * shift], axis=1)
  boxes = np.concatenate([first, second, [[size - 10, size - 10, size, size]]]).astype(np.float32)
  classes = np.concatenate([np.arange(num_classes)] * 2 + [[0]]).astype(np.int32)
  scores = np.concatenate([np.full(num_classes, 0.9), np.full(num_classes, 0.8), [0.5]]).astype(np.float32)
  return boxes, scores, classes


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exact_where_the_coordinate_offset_trick_rounds(algorithm):
  # 250 classes on a 4,000 px image: the trick shifts class c by c * 4,001 px, up to 1e6, where float32 spacing is
  # 0.0625-0.125 px; borderline pairs (IoU within 0.0025 of the threshold) then land on the wrong side.
  rng = np.random.default_rng(0)
  boxes, scores, classes = _borderline_pairs(rng, 250, 4000.0)
  want = greedy_nms(boxes, scores, 0.5, classes)
  trick = offset_trick_nms(boxes, scores, classes, 0.5)
  assert len(set(want) ^ set(trick)) >= 5  # the trick keeps or drops the wrong boxes
  assert _batched_nms(boxes, scores, classes, 0.5, algorithm=algorithm) == want
  assert _torchvision_batched_nms(boxes, scores, classes, 0.5) == trick  # torchvision (<= 1,000 boxes) does too


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_equal_scores_merge_classes_in_input_order(algorithm):
  rng = np.random.default_rng(4)
  boxes, _ = detector_boxes(rng, 300)
  scores = (rng.integers(0, 4, 300) / 4).astype(np.float32)
  classes = rng.integers(0, 5, 300).astype(np.int32)
  want = greedy_nms(boxes, scores, 0.5, classes)
  assert _batched_nms(boxes, scores, classes, 0.5, SMALL, algorithm=algorithm) == want


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_arbitrary_class_ids_and_truncation_by_score(algorithm):
  rng = np.random.default_rng(5)
  boxes, scores = detector_boxes(rng, 300)
  classes = rng.choice(np.array([-7, 0, 3, 2**30, -2**31], np.int32), 300)
  want = greedy_nms(boxes, scores, 0.5, classes)
  assert _batched_nms(boxes, scores, classes, 0.5, algorithm=algorithm) == want
  assert _batched_nms(boxes, scores, classes, 0.5, max_outputs=20, algorithm=algorithm) == want[:20]


class BatchedNmsVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*ALGORITHMS)
  def test_nan_inf_and_degenerate_boxes(self, algorithm):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, np.nan, 5], [1, 1, 11, 11], [20, 20, 20, 30],
                      [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.99, 0.7, 0.6, np.inf], np.float32)
    classes = np.array([0, 0, 0, 1, 1, 1], np.int32)
    fn = self.variant(functools.partial(batched_nms, iou_threshold=0.5, max_outputs=8, algorithm=algorithm))
    idx, valid = fn(boxes, scores, classes)
    chex.assert_shape([idx, valid], (8,))  # more slots than boxes
    assert _kept(idx, valid) == greedy_nms(boxes, scores, 0.5, classes) == [0, 3, 4]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_vmap_over_images_equals_per_image_calls(algorithm):
  rng = np.random.default_rng(6)
  batch = [detector_boxes(rng, PADDED) for _ in range(3)]
  boxes = np.stack([b for b, _ in batch])
  scores = np.stack([s for _, s in batch])
  classes = rng.integers(0, 4, (3, PADDED)).astype(np.int32)
  fn = functools.partial(_jit_batched_nms, threshold=np.float32(0.5), max_outputs=PADDED, sizes=SMALL,
                         algorithm=algorithm)
  idx, valid = jax.jit(jax.vmap(fn))(boxes, scores, classes)
  for i in range(3):
    single = fn(boxes[i], scores[i], classes[i])
    np.testing.assert_array_equal(idx[i], single[0])
    np.testing.assert_array_equal(valid[i], single[1])
    assert _kept(idx[i], valid[i]) == greedy_nms(boxes[i], scores[i], 0.5, classes[i])


def test_tiled_memory_stays_linear_for_20000_boxes():
  shapes = (jax.ShapeDtypeStruct((20000, 4), jnp.float32), jax.ShapeDtypeStruct((20000,), jnp.float32),
            jax.ShapeDtypeStruct((20000,), jnp.int32))
  fn = functools.partial(batched_nms, iou_threshold=0.5, max_outputs=20000, algorithm="tiled")
  assert largest_intermediate_bytes(fn, *shapes) < 2 * 2**20


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_random_boxes_many_classes(algorithm):
  rng = np.random.default_rng(9)
  boxes, scores = random_boxes(rng, 500, size=100.0), rng.uniform(size=500).astype(np.float32)
  classes = rng.integers(0, 200, 500).astype(np.int32)
  want = greedy_nms(boxes, scores, 0.3, classes)
  assert _batched_nms(boxes, scores, classes, 0.3, SMALL, algorithm=algorithm) == want
