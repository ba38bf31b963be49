"""Matcher tests: a NumPy loop transcription of the labelling rules, crowd, padding and low-quality cases."""

from __future__ import annotations

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.matching import BACKGROUND, FOREGROUND, IGNORE, match_boxes, match_fast_rcnn, match_rpn


def _iou_np(a, b):
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _match_reference(anchors, gt, valid, crowd, fg, bg, bg_low, low_quality, ioa_thr=0.5):
  """Loop transcription of the matching rules (torchvision Matcher + crowd ignore)."""
  n, m = len(anchors), len(gt)
  real = [j for j in range(m) if valid[j] and gt[j][2] > gt[j][0] and gt[j][3] > gt[j][1]]
  matchable = [j for j in real if not crowd[j]]
  iou = np.full((n, m), -1.0)
  for i in range(n):
    for j in matchable:
      iou[i, j] = _iou_np(anchors[i], gt[j])
  labels = np.full(n, IGNORE)
  best = np.maximum(iou.max(axis=1), 0.0) if m else np.zeros(n)
  for i in range(n):
    if bg_low <= best[i] < bg:
      labels[i] = BACKGROUND
    if best[i] >= fg:
      labels[i] = FOREGROUND
  if low_quality:
    for j in matchable:
      top = iou[:, j].max()
      if top > 0:
        for i in range(n):
          if iou[i, j] == top:
            labels[i] = FOREGROUND
  for i in range(n):
    a = anchors[i]
    area = (a[2] - a[0]) * (a[3] - a[1])
    for j in real:
      if crowd[j] and area > 0 and labels[i] != FOREGROUND:
        ix = max(0.0, min(a[2], gt[j][2]) - max(a[0], gt[j][0]))
        iy = max(0.0, min(a[3], gt[j][3]) - max(a[1], gt[j][1]))
        if ix * iy / area >= ioa_thr:
          labels[i] = IGNORE
    if not (a[2] > a[0] and a[3] > a[1]):
      labels[i] = IGNORE
  return labels, best


def _random_boxes(rng, n, size=100.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(2, size / 2, (n, 2))
  # Snap to a grid so that exact IoU ties (shared best anchors) really occur.
  return np.round(np.concatenate([xy, xy + wh], axis=1)).astype(np.float32)


_match = jax.jit(match_boxes, static_argnames=("fg_threshold", "bg_threshold", "bg_low_threshold",
                                               "allow_low_quality_matches", "crowd_ioa_threshold"))
_match_rpn = jax.jit(match_rpn)


@pytest.mark.parametrize("preset", ["rpn", "fast_rcnn", "single"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(preset, seed):
  rng = np.random.default_rng(seed)
  anchors = _random_boxes(rng, 60)
  gt = _random_boxes(rng, 8)
  valid = rng.uniform(size=8) < 0.8
  crowd = rng.uniform(size=8) < 0.2
  fg, bg, low, lq = {"rpn": (0.7, 0.3, 0.0, True), "fast_rcnn": (0.5, 0.5, 0.1, False),
                     "single": (0.5, 0.4, 0.0, False)}[preset]
  result = _match(anchors, gt, valid, fg_threshold=fg, bg_threshold=bg, bg_low_threshold=low,
                  allow_low_quality_matches=lq, gt_crowd=crowd)
  want_labels, want_iou = _match_reference(anchors, gt, valid, crowd, fg, bg, low, lq)
  np.testing.assert_array_equal(np.asarray(result.labels), want_labels)
  np.testing.assert_allclose(np.asarray(result.max_iou), want_iou, rtol=1e-6, atol=1e-7)
  fg_idx = np.asarray(result.labels) == FOREGROUND
  gt_of_fg = np.asarray(result.matched_gt)[fg_idx]
  assert np.all(valid[gt_of_fg] & ~crowd[gt_of_fg])


def test_presets_equal_explicit_thresholds():
  rng = np.random.default_rng(5)
  anchors, gt = _random_boxes(rng, 40), _random_boxes(rng, 5)
  valid = np.ones(5, bool)
  rpn = match_rpn(anchors, gt, valid)
  want, _ = _match_reference(anchors, gt, valid, np.zeros(5, bool), 0.7, 0.3, 0.0, True)
  np.testing.assert_array_equal(np.asarray(rpn.labels), want)
  frc = match_fast_rcnn(anchors, gt, valid)
  want, _ = _match_reference(anchors, gt, valid, np.zeros(5, bool), 0.5, 0.5, 0.1, False)
  np.testing.assert_array_equal(np.asarray(frc.labels), want)


def test_low_quality_match_forces_best_anchor_of_each_ground_truth():
  anchors = jnp.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], jnp.float32)
  gt = jnp.array([[0, 0, 20, 20], [50, 50, 70, 70]], jnp.float32)  # IoU 0.25 with anchors 0 and 2
  result = _match_rpn(anchors, gt, jnp.array([True, True]))
  np.testing.assert_array_equal(np.asarray(result.labels), [FOREGROUND, BACKGROUND, FOREGROUND])
  np.testing.assert_array_equal(np.asarray(result.matched_gt)[[0, 2]], [0, 1])


def test_all_padding_ground_truth_makes_everything_background():
  anchors = jnp.array([[0, 0, 10, 10], [5, 5, 30, 30]], jnp.float32)
  gt = jnp.array([[0, 0, 10, 10], [0, 0, 0, 0]], jnp.float32)
  result = _match_rpn(anchors, gt, jnp.array([False, False]))
  np.testing.assert_array_equal(np.asarray(result.labels), [BACKGROUND, BACKGROUND])
  np.testing.assert_array_equal(np.asarray(result.max_iou), [0.0, 0.0])


def test_zero_ground_truth_rows():
  anchors = jnp.array([[0, 0, 10, 10]], jnp.float32)
  result = match_rpn(anchors, jnp.zeros((0, 4)), jnp.zeros((0,), bool))
  np.testing.assert_array_equal(np.asarray(result.labels), [BACKGROUND])


def test_crowd_region_ignores_covered_anchors_and_is_never_matched():
  anchors = jnp.array([[0, 0, 10, 10], [2, 2, 12, 12], [80, 80, 90, 90]], jnp.float32)
  gt = jnp.array([[0, 0, 40, 40], [0, 0, 10, 10]], jnp.float32)
  result = match_boxes(anchors, gt, jnp.array([True, False]), fg_threshold=0.5, gt_crowd=jnp.array([True, False]))
  np.testing.assert_array_equal(np.asarray(result.labels), [IGNORE, IGNORE, BACKGROUND])


def test_degenerate_and_nan_boxes_are_ignored_and_finite():
  anchors = jnp.array([[0, 0, 10, 10], [5, 5, 5, 9], [jnp.nan, 0, 4, 4], [0, 0, jnp.inf, 4]], jnp.float32)
  gt = jnp.array([[0, 0, 10, 10], [jnp.nan, 1, 2, 3], [3, 3, 1, 1]], jnp.float32)
  result = _match_rpn(anchors, gt, jnp.ones(3, bool))
  np.testing.assert_array_equal(np.asarray(result.labels), [FOREGROUND, IGNORE, IGNORE, IGNORE])
  assert np.all(np.isfinite(np.asarray(result.max_iou)))
  assert int(result.matched_gt[0]) == 0


def test_vmap_over_images_and_shapes():
  rng = np.random.default_rng(3)
  anchors = _random_boxes(rng, 30)
  gts = np.stack([_random_boxes(rng, 4) for _ in range(3)])
  valid = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
  batched = jax.jit(jax.vmap(lambda g, v: match_rpn(anchors, g, v)))(gts, valid)
  chex.assert_shape([batched.labels, batched.matched_gt, batched.max_iou], (3, 30))
  for b in range(3):
    single = _match_rpn(anchors, gts[b], valid[b])
    np.testing.assert_array_equal(np.asarray(batched.labels[b]), np.asarray(single.labels))


@hypothesis.given(hnp.arrays(np.float32, (12, 4), elements=hypothesis.strategies.floats(0, 50, width=32)),
                  hnp.arrays(np.float32, (3, 4), elements=hypothesis.strategies.floats(0, 50, width=32)))
def test_labels_are_consistent_with_iou(anchors, gt):
  result = _match(anchors, gt, np.ones(3, bool), fg_threshold=0.5, bg_threshold=0.4)
  labels, iou = np.asarray(result.labels), np.asarray(result.max_iou)
  valid_anchor = (anchors[:, 2] > anchors[:, 0]) & (anchors[:, 3] > anchors[:, 1])
  assert np.all(labels[~valid_anchor] == IGNORE)
  assert np.all(iou[valid_anchor & (labels == FOREGROUND)] >= 0.5)
  assert np.all(iou[valid_anchor & (labels == BACKGROUND)] < 0.4)
  assert np.all((iou >= 0) & (iou <= 1))


class MatchingVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_labels_and_shapes_with_and_without_jit(self):
    rng = np.random.default_rng(11)
    anchors, gt = _random_boxes(rng, 50), _random_boxes(rng, 6)
    valid = np.array([True, True, True, True, False, False])  # padded ground truth
    crowd = np.array([False, False, False, True, False, False])
    result = self.variant(match_rpn)(anchors, gt, valid, crowd)
    chex.assert_shape([result.labels, result.matched_gt, result.max_iou], (50,))
    chex.assert_type([result.labels, result.matched_gt, result.max_iou], [jnp.int32, jnp.int32, jnp.float32])
    want, want_iou = _match_reference(anchors, gt, valid, crowd, 0.7, 0.3, 0.0, True)
    np.testing.assert_array_equal(np.asarray(result.labels), want)
    np.testing.assert_allclose(np.asarray(result.max_iou), want_iou, rtol=1e-6, atol=1e-7)
    empty = self.variant(match_rpn)(anchors, gt, np.zeros(6, bool), crowd)  # all padding
    np.testing.assert_array_equal(np.asarray(empty.labels), BACKGROUND)
