"""Greedy NMS against a NumPy transcription of torchvision's loop and torchvision itself: thresholds, sizes, ties.

Every behaviour is checked on both algorithms, "tiled" (the CPU default) and "bitmask" (the default on other
backends), each forced with the `algorithm` keyword so that both run on CPU.
"""

from __future__ import annotations

import functools

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxdet.ops.nms import DEFAULT_CHUNK, DEFAULT_SWEEP, DEFAULT_TILE, _pair_iou, _records, nms
from tests.ops.nms_reference import (detector_boxes, greedy_nms, iou_f32,
                                     largest_intermediate_bytes, random_boxes)

THRESHOLDS = [0.0, 0.1, 0.3, 0.5, 0.7, 0.95, 1.0]
# Small tiles, chunks and sweeps, so that a few hundred boxes exercise every path: many tiles, many kept chunks,
# repeated forward sweeps with compaction.
SMALL = (8, 16, 8)
DEFAULT = (DEFAULT_TILE, DEFAULT_CHUNK, DEFAULT_SWEEP)
PADDED = 512
ALGORITHMS = ("tiled", "bitmask")


@functools.partial(jax.jit, static_argnames=("max_outputs", "sizes", "algorithm"))
def _jit_nms(boxes, scores, threshold, *, max_outputs, sizes, algorithm):
  tile, chunk, sweep = sizes
  return nms(boxes, scores, iou_threshold=threshold, max_outputs=max_outputs, algorithm=algorithm, tile_size=tile,
             chunk_size=chunk, sweep_size=sweep)


def _nms(boxes, scores, threshold, sizes=DEFAULT, *, algorithm):
  """Kept indices, from one compilation per `sizes`: inputs padded to 512 boxes with -inf scores (never kept), and
  a traced float32 threshold (exact here: every threshold the tests use goes through `_f32`)."""
  n = len(scores)
  boxes = np.concatenate([boxes, np.zeros((PADDED - n, 4), np.float32)])
  scores = np.concatenate([scores, np.full((PADDED - n,), -np.inf, np.float32)])
  return _kept(_jit_nms(boxes, scores, np.float32(threshold), max_outputs=PADDED, sizes=sizes,
                        algorithm=algorithm))


def _f32(threshold):
  """A float32-representable threshold: comparing a float32 IoU with it is the same in float32 and float64."""
  return float(np.float32(threshold))


def _kept(result):
  idx, valid = (np.asarray(r) for r in result)
  assert np.all(idx[~valid] == 0) and np.all(valid[:valid.sum()])  # valid entries first, padding holds index 0
  return idx[valid].tolist()


def _torchvision_nms(boxes, scores, threshold):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  return torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy().tolist()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("threshold", map(_f32, THRESHOLDS))
def test_equal_to_loop_reference_for_every_threshold(threshold, algorithm):
  rng = np.random.default_rng(int(threshold * 100))
  clustered = detector_boxes(rng, 300)
  uniform = random_boxes(rng, 300), rng.uniform(size=300).astype(np.float32)
  for boxes, scores in (clustered, uniform):
    want = greedy_nms(boxes, scores, threshold)
    assert _nms(boxes, scores, threshold, SMALL, algorithm=algorithm) == want
    assert _nms(boxes, scores, threshold, algorithm=algorithm) == want


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("threshold", map(_f32, THRESHOLDS))
def test_equal_to_torchvision_for_every_threshold(threshold, algorithm):
  rng = np.random.default_rng(7)
  boxes, scores = detector_boxes(rng, 400)
  want = _torchvision_nms(boxes, scores, threshold)
  assert _nms(boxes, scores, threshold, SMALL, algorithm=algorithm) == want
  assert _nms(boxes, scores, threshold, algorithm=algorithm) == want


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("n", [0, 1, DEFAULT_TILE - 1, DEFAULT_TILE, DEFAULT_TILE + 1])
def test_every_input_size(n, algorithm):
  # Unpadded: the tiling depends on the array length itself (many tiles: the padded tests above).
  rng = np.random.default_rng(n)
  boxes, scores = detector_boxes(rng, n, num_objects=max(1, n // 20))
  got = _kept(_jit_nms(boxes, scores, np.float32(0.5), max_outputs=max(n, 1), sizes=DEFAULT, algorithm=algorithm))
  assert got == greedy_nms(boxes, scores, 0.5)
  if n:
    assert got == _torchvision_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_boxes_spread_over_many_tiles_suppress_across_tiles(algorithm):
  # 20 copies of 25 objects, interleaved in score order: each object's first copy sits in the first tile and has
  # to suppress its copies in every later tile (and the forward sweeps must carry that across compactions).
  rng = np.random.default_rng(3)
  objects = random_boxes(rng, 25, size=2000.0, max_wh=50.0)
  boxes = np.tile(objects, (20, 1)) + rng.normal(0, 0.5, (500, 4)).astype(np.float32)
  scores = np.linspace(1.0, 0.1, 500).astype(np.float32)
  want = greedy_nms(boxes, scores, 0.5)
  assert len(want) == 25
  assert _nms(boxes, scores, 0.5, SMALL, algorithm=algorithm) == want
  assert _nms(boxes, scores, 0.5, algorithm=algorithm) == want
  assert want == _torchvision_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_chains_of_overlapping_boxes_at_low_threshold(algorithm):
  # Each box overlaps its neighbour with IoU 0.43 and the next one with 0.11: at 0.3 greedy NMS keeps every other
  # box. A tiled NMS that resolves a tile in one pass (correct only at t >= 0.5) would also drop the victims'
  # victims.
  x = np.arange(100, dtype=np.float32) * 4.0
  boxes = np.stack([x, np.zeros_like(x), x + 10.0, np.full_like(x, 10.0)], axis=1)
  scores = np.linspace(1.0, 0.5, 100).astype(np.float32)
  want = greedy_nms(boxes, scores, 0.3)
  assert want == list(range(0, 100, 2))
  assert _nms(boxes, scores, _f32(0.3), SMALL, algorithm=algorithm) == want
  assert _nms(boxes, scores, _f32(0.3), algorithm=algorithm) == want
  assert want == _torchvision_nms(boxes, scores, 0.3)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_iou_equal_to_float32_threshold_is_suppressed_like_torchvision(algorithm):
  # inter 6 / union 20 rounds to float32(0.3) = 0.30000001..., which is above 0.3: torchvision compares the
  # float32 IoU with the float64 threshold and suppresses box 1; comparing against float32(0.3) would keep it.
  boxes = np.array([[0, 0, 13, 1], [7, 0, 20, 1]], np.float32)
  scores = np.array([0.9, 0.8], np.float32)
  assert iou_f32(boxes[0], boxes[1:])[0] == np.float32(0.3)
  assert greedy_nms(boxes, scores, 0.3) == [0]
  assert _kept(nms(boxes, scores, iou_threshold=0.3, max_outputs=2, algorithm=algorithm)) == [0]
  assert _torchvision_nms(boxes, scores, 0.3) == [0]
  # The same IoU against the float32 threshold itself is not above it.
  assert greedy_nms(boxes, scores, _f32(0.3)) == [0, 1]
  assert _nms(boxes, scores, _f32(0.3), algorithm=algorithm) == [0, 1]


def test_pair_iou_is_bitwise_torchvision_arithmetic():
  rng = np.random.default_rng(4)
  a = random_boxes(rng, 64, size=50.0, max_wh=30.0)
  b = a[rng.permutation(64)] + rng.normal(0, 2, (64, 4)).astype(np.float32)
  b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.25)
  index = jnp.arange(64)
  got = np.asarray(jax.jit(_pair_iou)(_records(jnp.asarray(a), index, None), _records(jnp.asarray(b), index, None)))
  want = np.stack([iou_f32(box, b) for box in a])
  np.testing.assert_array_equal(got, want)
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  np.testing.assert_array_equal(got, torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("levels", [2, 20])
def test_equal_scores_keep_input_order(levels, algorithm):
  rng = np.random.default_rng(levels)
  boxes, _ = detector_boxes(rng, 500)
  scores = (rng.integers(0, levels, 500) / levels).astype(np.float32)
  scores[:7] = -0.0  # ties with 0.0 as in a stable sort on value
  want = greedy_nms(boxes, scores, 0.5)
  assert _nms(boxes, scores, 0.5, SMALL, algorithm=algorithm) == want
  assert _nms(boxes, scores, 0.5, algorithm=algorithm) == want
  assert want == _torchvision_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@hypothesis.given(n=st.integers(1, 60), threshold=st.floats(0.0, 1.0, width=32),
                  sizes=st.sampled_from([(1, 1, 1), SMALL, DEFAULT]),
                  seed=st.integers(0, 10**6))
def test_independent_of_tile_chunk_and_sweep_sizes(n, threshold, sizes, seed, algorithm):
  rng = np.random.default_rng(seed)
  boxes = random_boxes(rng, n, size=60.0, max_wh=40.0)
  scores = np.round(rng.uniform(size=n), 1).astype(np.float32)
  assert _nms(boxes, scores, threshold, sizes, algorithm=algorithm) == greedy_nms(boxes, scores, threshold)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_max_outputs_truncates_in_score_order_after_the_score_threshold(algorithm):
  rng = np.random.default_rng(1)
  boxes, scores = detector_boxes(rng, 200)
  full = greedy_nms(boxes, scores, 0.5, score_threshold=0.3)
  assert len(full) > 10 and len(full) < len(greedy_nms(boxes, scores, 0.5))
  idx, valid = jax.jit(functools.partial(nms, iou_threshold=0.5, max_outputs=10, score_threshold=0.3, tile_size=8,
                                         chunk_size=16, sweep_size=8, algorithm=algorithm))(boxes, scores)
  chex.assert_shape([idx, valid], (10,))
  chex.assert_type([idx, valid], [jnp.int32, bool])
  assert np.asarray(idx).tolist() == full[:10] and np.all(valid)


class NmsVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*ALGORITHMS)
  def test_nan_inf_and_degenerate_boxes(self, algorithm):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, np.nan, 5], [20, 20, 20, 30], [40, 40, 50, 50],
                      [0, 0, np.inf, 5], [5, 5, 3, 3], [20, 20, 20, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.99, 0.7, np.nan, 0.95, 0.85, 0.6], np.float32)
    fn = self.variant(functools.partial(nms, iou_threshold=0.5, max_outputs=10, algorithm=algorithm))
    # NaN/inf boxes and the NaN score are never kept; the empty (3, 7) and inverted (6) boxes overlap nothing.
    idx, valid = fn(boxes, scores)
    chex.assert_shape([idx, valid], (10,))  # more slots than boxes
    assert _kept((idx, valid)) == greedy_nms(boxes, scores, 0.5) == [0, 6, 3, 7]  # 6 invalid slots
    assert _kept(fn(boxes[:0], scores[:0])) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_vmap_over_images_equals_per_image_calls(algorithm):
  rng = np.random.default_rng(2)
  batch = [detector_boxes(rng, PADDED) for _ in range(3)]
  boxes = np.stack([b for b, _ in batch])
  scores = np.stack([s for _, s in batch])
  scores[1, 60:] = -np.inf  # a padded image: fewer real boxes
  fn = functools.partial(_jit_nms, threshold=np.float32(0.4), max_outputs=PADDED, sizes=SMALL, algorithm=algorithm)
  idx, valid = jax.jit(jax.vmap(fn))(boxes, scores)
  chex.assert_shape([idx, valid], (3, PADDED))
  for i in range(3):
    single_idx, single_valid = fn(boxes[i], scores[i])
    np.testing.assert_array_equal(idx[i], single_idx)
    np.testing.assert_array_equal(valid[i], single_valid)
    assert _kept((idx[i], valid[i])) == greedy_nms(boxes[i], scores[i], 0.4)


def test_tiled_memory_stays_linear_for_20000_boxes():
  boxes, scores = jax.ShapeDtypeStruct((20000, 4), jnp.float32), jax.ShapeDtypeStruct((20000,), jnp.float32)
  fn = functools.partial(nms, iou_threshold=0.5, max_outputs=20000, algorithm="tiled")
  # A dense 20,000 x 20,000 IoU matrix would be 1.6 GB; no array of the program, loop bodies included, is larger
  # than the candidate records (6 x 20,000 floats), and nothing is run to find out.
  assert largest_intermediate_bytes(fn, boxes, scores) < 2 * 2**20


def test_bitmask_memory_is_the_packed_mask():
  # The [N, N / 32] uint32 mask (N^2 / 8 bytes) is the one large buffer: the pairwise IoU and comparison fuse into
  # the packing reduction instead of being stored (N^2 floats would be 32 times more).
  n = 4096
  boxes, scores = jax.ShapeDtypeStruct((n, 4), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32)
  fn = functools.partial(nms, iou_threshold=0.5, max_outputs=n, algorithm="bitmask")
  temp = jax.jit(fn).lower(boxes, scores).compile().memory_analysis().temp_size_in_bytes
  assert n * n // 8 <= temp < 3 * n * n // 8


def test_unknown_algorithm_is_named():
  with pytest.raises(ValueError, match="algorithm"):
    nms(np.zeros((2, 4), np.float32), np.zeros(2, np.float32), iou_threshold=0.5, max_outputs=2, algorithm="cuda")


@pytest.mark.parametrize("algorithm", ("auto", *ALGORITHMS))
def test_selection_can_sit_inside_a_differentiated_function(algorithm):
  # Indices carry no gradient; a loss that gathers the kept boxes differentiates through the gather (the tiled
  # path's batching rule has no autodiff rule of its own, so nms stops the gradient of its inputs).
  rng = np.random.default_rng(8)
  boxes, scores = detector_boxes(rng, 64)

  def loss(b):
    idx, valid = nms(b, scores, iou_threshold=0.5, max_outputs=8, algorithm=algorithm)
    return jnp.sum(jnp.where(valid[:, None], b[idx], 0.0))

  grad = jax.jit(jax.grad(loss))(boxes)
  kept = greedy_nms(boxes, scores, 0.5)[:8]
  want = np.zeros_like(boxes)
  want[kept] = 1.0
  np.testing.assert_array_equal(grad, want)



def test_auto_picks_tiled_on_cpu_and_bitmask_elsewhere():
  boxes, scores = jax.ShapeDtypeStruct((300, 4), jnp.float32), jax.ShapeDtypeStruct((300,), jnp.float32)
  fn = jax.jit(functools.partial(nms, iou_threshold=0.5, max_outputs=100))
  lowered = {p: jax.export.export(fn, platforms=[p])(boxes, scores).mlir_module() for p in ("cpu", "cuda", "tpu")}
  # Only the bitmask path shifts bits (packing the mask); the tiled path has its five nested while loops.
  assert "shift_left" not in lowered["cpu"] and lowered["cpu"].count("stablehlo.while") == 5
  assert "shift_left" in lowered["cuda"] and "shift_left" in lowered["tpu"]
