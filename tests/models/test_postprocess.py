"""The shared dense post-processing against a NumPy transcription: per-level top-k, threshold, class-aware NMS,
top detections; class-specific boxes; clipping and empty boxes; fixed-size output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.postprocess import select_detections
from tests.ops.nms_reference import greedy_nms


def reference(boxes, scores, level_sizes, k, thr, iou, max_det, image_shape=None):
  """NumPy: per level the k best (anchor, class) pairs (ties by lower flat index), then thresholds, NMS, top."""
  num_classes = scores.shape[1]
  cands = []
  start = 0
  for size in level_sizes:
    flat = scores[start:start + size].reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]
    cands += [(flat[i], start + i // num_classes, i % num_classes) for i in order]
    start += size
  s = np.array([c[0] for c in cands], np.float32)
  a = np.array([c[1] for c in cands])
  c = np.array([c[2] for c in cands])
  b = boxes[a, c] if boxes.ndim == 3 else boxes[a]
  if image_shape is not None:
    b = np.clip(b, 0, [image_shape[1], image_shape[0]] * 2).astype(np.float32)
  s = np.where((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]), s, -np.inf).astype(np.float32)
  keep = greedy_nms(b, s, iou, classes=c, score_threshold=thr)[:max_det]
  return b[keep], s[keep], c[keep]


def random_case(seed, n=60, num_classes=3, class_specific=False):
  rng = np.random.default_rng(seed)
  xy = rng.uniform(-10, 90, (n, 2))
  wh = rng.uniform(2, 40, (n, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  if class_specific:
    boxes = (boxes[:, None, :] + rng.normal(0, 2, (n, num_classes, 4))).astype(np.float32)
  scores = rng.uniform(0, 1, (n, num_classes)).astype(np.float32)
  return boxes, scores


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_select_detections_matches_numpy(seed, class_specific):
  boxes, scores = random_case(seed, class_specific=class_specific)
  levels = (36, 16, 8)
  dets = select_detections(jnp.asarray(boxes)[None], jnp.asarray(scores)[None], level_sizes=levels,
                           candidates_per_level=20, score_threshold=0.3, iou_threshold=0.5, max_detections=15,
                           image_shape=(80, 90))
  b, s, c = reference(boxes, scores, levels, 20, 0.3, 0.5, 15, image_shape=(80, 90))
  n = len(s)
  assert dets.boxes.shape == (1, 15, 4) and int(dets.valid.sum()) == n
  np.testing.assert_array_equal(np.asarray(dets.valid[0]), np.arange(15) < n)
  np.testing.assert_allclose(dets.boxes[0, :n], b, rtol=1e-6)
  np.testing.assert_allclose(dets.scores[0, :n], s)
  np.testing.assert_array_equal(dets.classes[0, :n], c)
  assert np.all(np.asarray(dets.boxes[0, n:]) == 0) and np.all(np.asarray(dets.scores[0, n:]) == 0)


def test_select_detections_batches_images_independently_and_jits():
  cases = [random_case(s) for s in range(3)]
  boxes = jnp.stack([jnp.asarray(b) for b, _ in cases])
  scores = jnp.stack([jnp.asarray(s) for _, s in cases])
  fn = jax.jit(lambda b, s: select_detections(b, s, candidates_per_level=30, max_detections=10))
  batched = fn(boxes, scores)
  for i in range(3):
    one = select_detections(boxes[i:i + 1], scores[i:i + 1], candidates_per_level=30, max_detections=10)
    np.testing.assert_array_equal(batched.classes[i], one.classes[0])
    np.testing.assert_allclose(batched.scores[i], one.scores[0])


def test_boxes_empty_after_clipping_are_never_selected():
  boxes = jnp.array([[[200.0, 10, 220, 30], [10, 10, 30, 30]]])  # the first lies right of a 100-wide image
  scores = jnp.array([[[0.9], [0.6]]])
  dets = select_detections(boxes, scores, image_shape=(100, 100), max_detections=3)
  np.testing.assert_array_equal(dets.valid[0], [True, False, False])
  np.testing.assert_allclose(dets.boxes[0, 0], [10, 10, 30, 30])


def test_select_detections_rejects_bad_level_sizes():
  boxes, scores = random_case(0)
  with pytest.raises(ValueError, match="level_sizes"):
    select_detections(jnp.asarray(boxes)[None], jnp.asarray(scores)[None], level_sizes=(10, 10))


def per_class_reference(boxes, scores, level_sizes, k, thr, iou, max_det, image_shape):
  """NumPy, SSD's order: per level and class the k best anchors (ties by lower index), then thresholds and NMS."""
  cands = []
  start = 0
  for size in level_sizes:
    for c in range(scores.shape[1]):
      column = scores[start:start + size, c]
      cands += [(column[i], start + i, c) for i in np.argsort(-column, kind="stable")[:k]]
    start += size
  s = np.array([x[0] for x in cands], np.float32)
  a = np.array([x[1] for x in cands])
  c = np.array([x[2] for x in cands])
  b = np.clip(boxes[a], 0, [image_shape[1], image_shape[0]] * 2).astype(np.float32)
  s = np.where((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]), s, -np.inf).astype(np.float32)
  keep = greedy_nms(b, s, iou, classes=c, score_threshold=thr)[:max_det]
  return b[keep], s[keep], c[keep]


@pytest.mark.parametrize("levels", [(60,), (36, 16, 8)])
@pytest.mark.parametrize("seed", range(3))
def test_per_class_candidates_match_numpy(seed, levels):
  boxes, scores = random_case(seed)
  scores[:, 0] *= 0.3  # a weak class, so the per-class quota differs from the best pairs overall
  dets = select_detections(jnp.asarray(boxes)[None], jnp.asarray(scores)[None], level_sizes=levels,
                           candidates_per_level=6, per_class=True, score_threshold=0.1, iou_threshold=0.45,
                           max_detections=60, image_shape=(80, 90))
  b, s, c = per_class_reference(boxes, scores, levels, 6, 0.1, 0.45, 60, (80, 90))
  n = len(s)
  assert int(dets.valid.sum()) == n < 60 and 0 in c.tolist()
  np.testing.assert_allclose(dets.boxes[0, :n], b, rtol=1e-6)
  np.testing.assert_allclose(dets.scores[0, :n], s)
  np.testing.assert_array_equal(dets.classes[0, :n], c)
