"""Greedy NMS and class-aware NMS against a NumPy loop reference and torchvision, on every threshold and tiling."""

from __future__ import annotations

import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.nms import batched_nms, nms
from tests.ops.nms_reference import greedy_nms, random_boxes


@functools.partial(jax.jit, static_argnames=("iou_threshold", "max_outputs", "tile_size", "score_threshold"))
def _nms(boxes, scores, *, iou_threshold, max_outputs, tile_size=16, score_threshold=None):
  return nms(boxes, scores, iou_threshold=iou_threshold, max_outputs=max_outputs, tile_size=tile_size,
             score_threshold=score_threshold)


def _kept(result):
  idx, valid = result
  return np.asarray(idx)[np.asarray(valid)].tolist()


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 0.5, 0.7, 0.95, 1.0])
def test_equal_to_loop_reference_over_many_tiles(threshold):
  rng = np.random.default_rng(int(threshold * 100))
  boxes = random_boxes(rng, 200)  # 13 tiles of 16
  scores = rng.uniform(size=200).astype(np.float32)
  got = _kept(_nms(boxes, scores, iou_threshold=threshold, max_outputs=200))
  assert got == greedy_nms(boxes, scores, threshold)


def test_chains_of_overlapping_boxes_at_low_threshold():
  # Each box overlaps its neighbour with IoU ~0.43 and the one after with ~0.11: at 0.3 greedy NMS keeps every
  # other box, which a single-pass tiled NMS gets wrong (it suppresses the kept boxes' victims' victims too).
  x = np.arange(100, dtype=np.float32) * 4.0
  boxes = np.stack([x, np.zeros_like(x), x + 10.0, np.full_like(x, 10.0)], axis=1)
  scores = np.linspace(1.0, 0.5, 100).astype(np.float32)
  got = _kept(_nms(boxes, scores, iou_threshold=0.3, max_outputs=100))
  want = greedy_nms(boxes, scores, 0.3)
  assert got == want
  assert want[:3] == [0, 2, 4]


def test_equal_to_torchvision_including_score_ties():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  rng = np.random.default_rng(0)
  for threshold in (0.3, 0.5, 0.7):
    boxes = random_boxes(rng, 300)
    scores = np.round(rng.uniform(size=300), 2).astype(np.float32)  # many equal scores
    want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy().tolist()
    assert _kept(_nms(boxes, scores, iou_threshold=threshold, max_outputs=300)) == want


@hypothesis.given(st.integers(1, 60), st.floats(0.0, 1.0), st.sampled_from([1, 4, 16, 64]), st.integers(0, 10**6))
def test_independent_of_tile_size_and_equal_to_reference(n, threshold, tile, seed):
  rng = np.random.default_rng(seed)
  boxes = np.zeros((64, 4), np.float32)
  boxes[:n] = random_boxes(rng, n, size=60.0, max_wh=40.0)
  scores = np.full((64,), -np.inf, np.float32)
  scores[:n] = np.round(rng.uniform(size=n), 1)
  got = _kept(nms(boxes, scores, iou_threshold=threshold, max_outputs=64, tile_size=tile))
  assert got == greedy_nms(boxes[:n], scores[:n], threshold)


def test_max_outputs_truncates_in_score_order_and_pads_with_invalid():
  rng = np.random.default_rng(1)
  boxes, scores = random_boxes(rng, 100), rng.uniform(size=100).astype(np.float32)
  full = greedy_nms(boxes, scores, 0.5)
  idx, valid = _nms(boxes, scores, iou_threshold=0.5, max_outputs=10)
  chex.assert_shape([idx, valid], (10,))
  assert np.asarray(idx).tolist() == full[:10] and np.all(valid)
  idx, valid = _nms(boxes[:3], scores[:3], iou_threshold=0.5, max_outputs=8)
  assert np.asarray(valid).sum() == len(greedy_nms(boxes[:3], scores[:3], 0.5))
  assert idx.dtype == jnp.int32


def test_score_threshold_nan_inf_and_degenerate_boxes():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, np.nan, 5], [20, 20, 20, 30], [40, 40, 50, 50],
                    [0, 0, np.inf, 5]], np.float32)
  scores = np.array([0.9, 0.8, 0.99, 0.7, np.nan, 0.95], np.float32)
  got = _kept(_nms(boxes, scores, iou_threshold=0.5, max_outputs=6))
  assert got == [0, 3]  # NaN/inf boxes and the NaN score are never kept; the empty box 3 suppresses nothing
  got = _kept(_nms(boxes, scores, iou_threshold=0.5, max_outputs=6, score_threshold=0.75))
  assert got == [0]


def test_empty_input():
  idx, valid = nms(jnp.zeros((0, 4)), jnp.zeros((0,)), iou_threshold=0.5, max_outputs=4)
  chex.assert_shape(idx, (4,))
  assert not np.any(valid)


def test_vmap_over_images():
  rng = np.random.default_rng(2)
  boxes = np.stack([random_boxes(rng, 50) for _ in range(3)])
  scores = rng.uniform(size=(3, 50)).astype(np.float32)
  idx, valid = jax.vmap(lambda b, s: nms(b, s, iou_threshold=0.4, max_outputs=50, tile_size=16))(boxes, scores)
  for i in range(3):
    assert np.asarray(idx[i])[np.asarray(valid[i])].tolist() == greedy_nms(boxes[i], scores[i], 0.4)


@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_batched_nms_equal_to_per_class_reference_and_torchvision(threshold):
  rng = np.random.default_rng(3)
  boxes, scores = random_boxes(rng, 150), rng.uniform(size=150).astype(np.float32)
  classes = rng.integers(0, 4, 150).astype(np.int32)
  fn = jax.jit(lambda b, s, c: batched_nms(b, s, c, iou_threshold=threshold, max_outputs=150, tile_size=16))
  got = _kept(fn(boxes, scores, classes))
  assert got == greedy_nms(boxes, scores, threshold, classes)
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  want = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes),
                                     threshold).numpy().tolist()
  assert got == want


def test_batched_nms_exact_where_the_coordinate_offset_trick_rounds():
  # Class 999 holds a pair with IoU 0.4996 (both kept at 0.5). The offset trick adds 999 * 4001 = 3,996,999 to
  # their coordinates, where float32 spacing is 0.25 px: the shift 33.37 rounds to 33.25 and the IoU becomes
  # 0.5009, so torchvision's batched_nms drops box 2. Masking classes keeps the IoU exact.
  boxes = np.array([[3900, 3900, 4000, 4000], [0, 0, 100, 100], [33.37, 0, 133.37, 100]], np.float32)
  scores = np.array([0.9, 0.8, 0.7], np.float32)
  classes = np.array([0, 999, 999], np.int32)
  got = _kept(batched_nms(boxes, scores, classes, iou_threshold=0.5, max_outputs=3))
  assert got == greedy_nms(boxes.astype(np.float64), scores, 0.5, classes) == [0, 1, 2]
