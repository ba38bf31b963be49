"""Per-class NMS variants on top-K candidates against NumPy transcriptions of the papers' loops, run per class and
merged by score: standard NMS, IoU-guided NMS (IoU-Net's Algorithm 1) and Gaussian Soft-NMS."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.rescoring import select_per_class, top_candidates
from tests.ops.nms_reference import greedy_nms, iou_guided_np, soft_nms_np


def clusters(seed=0, num_objects=4, copies=6):
  """`(boxes [N, 4], scores [N], loc [N], classes [N])`: jittered copies of a few objects, two classes overlapping."""
  rng = np.random.default_rng(seed)
  wh = rng.uniform(15, 40, (num_objects, 2))
  xy = rng.uniform(0, 60, (num_objects, 2))
  objects = np.concatenate([xy, xy + wh], -1)
  src = np.repeat(np.arange(num_objects), copies)
  boxes = objects[src] + rng.normal(0, 2.5, (len(src), 4))
  boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
  classes = np.where(rng.uniform(size=len(src)) < 0.3, 1 - src % 2, src % 2)  # some copies take the other class
  return (boxes.astype(np.float32), rng.uniform(0.06, 1, len(src)).astype(np.float32),
          rng.uniform(0.3, 1, len(src)).astype(np.float32), classes.astype(np.int32))


def per_class_reference(method, boxes, scores, loc, classes, thr, max_outputs):
  """`(boxes, scores)` of each class's loop, merged by descending score (ties: lower class, then selection)."""
  kept = []
  for c in np.unique(classes):
    mine = np.flatnonzero(classes == c)
    if method == "nms":
      idx = greedy_nms(boxes[mine], scores[mine], thr)
      out = [(scores[mine][i], c, k, mine[i]) for k, i in enumerate(idx)]
    elif method == "iou_guided":
      idx, sc = iou_guided_np(boxes[mine], scores[mine], loc[mine], thr)
      out = [(s, c, k, mine[i]) for k, (i, s) in enumerate(zip(idx, sc))]
    else:
      idx, sc = soft_nms_np(boxes[mine], scores[mine], "gaussian", 0.5, 0.3, 0.001)
      out = [(s, c, k, mine[i]) for k, (i, s) in enumerate(zip(idx, sc))]
    kept += out
  kept.sort(key=lambda t: (-t[0], t[1], t[2]))
  kept = kept[:max_outputs]
  return boxes[[t[3] for t in kept]], np.array([t[0] for t in kept])


@pytest.mark.parametrize("method", ["nms", "iou_guided", "soft"])
def test_per_class_selection_equals_the_papers_loops(method):
  boxes, scores, loc, classes = clusters()
  n = len(boxes)
  # As a head's outputs: one RoI per box, two classes, the box's score in its own class column only.
  per_class = np.zeros((n, 2), np.float32)
  per_class[np.arange(n), classes] = scores
  cand = top_candidates(jnp.broadcast_to(jnp.asarray(boxes)[:, None], (n, 2, 4)), jnp.asarray(per_class), top_k=2 * n,
                        score_threshold=0.05, image_shape=None)
  assert int(cand.valid.sum()) == n
  loc_of_cand = jnp.asarray(loc)[cand.index // 2]
  max_outputs = 10
  fn = jax.jit(functools.partial(select_per_class, num_classes=2, method=method, iou_threshold=0.5,
                                 max_outputs=max_outputs))
  keep, kept_scores, valid = fn(cand, localization=loc_of_cand)
  want_boxes, want_scores = per_class_reference(method, boxes, scores, loc, classes, 0.5, max_outputs)
  k = len(want_scores)
  np.testing.assert_array_equal(np.asarray(valid), np.arange(max_outputs) < k)
  np.testing.assert_allclose(np.asarray(kept_scores)[:k], want_scores, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(cand.boxes)[np.asarray(keep)[:k]], want_boxes, rtol=1e-6)
  if method == "iou_guided":  # a cluster's best score moves onto its best-localised box
    assert not np.array_equal(np.asarray(cand.boxes)[np.asarray(keep)[:k]],
                              per_class_reference("nms", boxes, scores, loc, classes, 0.5, max_outputs)[0])


def test_top_candidates_threshold_clip_and_order():
  boxes = jnp.array([[[0, 0, 10, 10], [5, 5, 200, 20]], [[-5, 0, -1, 8], [2, 2, 6, 6]]], jnp.float32)
  scores = jnp.array([[0.9, 0.3], [0.8, 0.04]], jnp.float32)
  cand = top_candidates(boxes, scores, top_k=3, score_threshold=0.05, image_shape=(32, 64))
  np.testing.assert_array_equal(cand.index, [0, 2, 1])  # by score: (roi 0, class 0), (roi 1, class 0), (0, 1)
  np.testing.assert_array_equal(cand.valid, [True, False, True])  # roi 1's box is empty once clipped
  np.testing.assert_allclose(cand.boxes[2], [5, 5, 64, 20])
  np.testing.assert_array_equal(cand.classes, [0, 0, 1])
