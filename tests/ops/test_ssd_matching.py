"""SSD's matching (best prior forced, then IoU >= 0.5) against a loop transcription, and its box encoding with
variances (0.1, 0.2) against the paper's formula."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.ops.anchors import ssd_priors
from jaxdet.ops.coders import decode_boxes, encode_boxes
from jaxdet.ops.matching import BACKGROUND, FOREGROUND, IGNORE, match_ssd
from tests.ops.test_matching import _iou_np

PRIORS = np.asarray(ssd_priors((8, 4, 2, 1), aspect_ratios=((2,), (2, 3), (2,), (2,)), s_min=0.15)) * 64


def ssd_match_reference(priors, gt, valid, threshold=0.5):
  """ssd.pytorch's `match`, as loops: threshold matching, then each truth's best prior (first among ties) forced to
  it; a prior forced by several truths takes the one it overlaps most (lower index among ties)."""
  n = len(priors)
  real = [j for j in range(len(gt)) if valid[j] and gt[j][2] > gt[j][0] and gt[j][3] > gt[j][1]]
  iou = np.full((n, max(len(gt), 1)), -1.0)
  for i in range(n):
    for j in real:
      iou[i, j] = _iou_np(priors[i], gt[j])
  matched = iou.argmax(axis=1)
  best = np.maximum(iou.max(axis=1), 0.0)
  labels = np.where(best >= threshold, FOREGROUND, BACKGROUND)
  forcing = {}
  for j in real:
    if iou[:, j].max() > 0:
      forcing.setdefault(int(np.argmax(iou[:, j])), []).append(j)
  for i, truths in forcing.items():
    j = max(truths, key=lambda t: (iou[i, t], -t))
    matched[i], best[i], labels[i] = j, iou[i, j], FOREGROUND
  return labels, matched, best


def random_truths(rng, m=8, side=64):
  xy = rng.uniform(-4, side - 6, (m, 2))
  wh = rng.uniform(3, 40, (m, 2))
  gt = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  valid = rng.uniform(size=m) < 0.8
  gt[rng.integers(m)] = [10, 10, 10, 20]  # a degenerate row, never matched
  return gt, valid


class MatchTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_the_loop_transcription(self):
    match = self.variant(match_ssd)
    for seed in range(6):
      rng = np.random.default_rng(seed)
      gt, valid = random_truths(rng)
      result = match(jnp.asarray(PRIORS), jnp.asarray(gt), jnp.asarray(valid))
      labels, matched, best = ssd_match_reference(PRIORS, gt, valid)
      np.testing.assert_array_equal(result.labels, labels)
      fg = labels == FOREGROUND
      np.testing.assert_array_equal(np.asarray(result.matched_gt)[fg], matched[fg])
      np.testing.assert_allclose(np.asarray(result.max_iou)[fg], best[fg], rtol=1e-5)
      assert fg.sum() >= np.sum(valid & (gt[:, 2] > gt[:, 0]))  # every real truth has a prior


def test_each_truth_gets_its_best_prior_even_below_the_threshold():
  priors = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], np.float32)
  gt = np.array([[1, 1, 4, 4],       # IoU 0.09 with prior 0: still that prior's object
                 [22, 22, 41, 41]], np.float32)  # IoU 0.78 with prior 1
  result = match_ssd(priors, gt, np.array([True, True]))
  np.testing.assert_array_equal(result.labels, [FOREGROUND, FOREGROUND, BACKGROUND])
  np.testing.assert_array_equal(np.asarray(result.matched_gt)[:2], [0, 1])
  np.testing.assert_allclose(result.max_iou[0], 9 / 100)


def test_forcing_overrides_the_prior_own_best_truth():
  # Prior 1 is truth 0's best prior (IoU 0.5625) though it overlaps truth 1 more (IoU 1): it is forced to truth 0.
  # Truth 1's own best prior is also prior 1 — a collision — so prior 1 goes to the truth it overlaps most, truth 1,
  # and truth 0 keeps no forced prior.
  priors = np.array([[0, 0, 8, 8], [0, 0, 4, 4]], np.float32)
  gt = np.array([[0, 0, 3, 3], [0, 0, 4, 4]], np.float32)
  result = match_ssd(priors, gt, np.array([True, True]))
  np.testing.assert_array_equal(result.labels, [BACKGROUND, FOREGROUND])
  assert int(result.matched_gt[1]) == 1
  # Without the collision, the forced truth wins over the prior's own best.
  priors = np.array([[0, 0, 4, 4], [0, 0, 3.5, 3.5], [10, 10, 20, 20]], np.float32)
  gt = np.array([[0, 0, 3, 3], [0, 0, 4, 4]], np.float32)  # best prior: truth 0 -> prior 1, truth 1 -> prior 0
  result = match_ssd(priors, gt, np.array([True, True]))
  np.testing.assert_array_equal(result.labels, [FOREGROUND, FOREGROUND, BACKGROUND])
  np.testing.assert_array_equal(np.asarray(result.matched_gt)[:2], [1, 0])


def test_tied_best_priors_force_only_the_first():
  priors = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]], np.float32)  # two identical priors
  gt = np.array([[0, 0, 4, 4]], np.float32)  # IoU 0.16 with both
  result = match_ssd(priors, gt, np.array([True]))
  np.testing.assert_array_equal(result.labels, [FOREGROUND, BACKGROUND, BACKGROUND])


def test_threshold_is_inclusive_and_padding_crowd_and_empty_images():
  priors = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [40, 40, 50, 50]], np.float32)
  gt = np.array([[0, 0, 10, 10], [0, 0, 0, 0], [40, 40, 50, 50]], np.float32)
  result = match_ssd(priors, gt, np.array([True, False, True]), np.array([False, False, True]))
  # Prior 1 has IoU exactly 0.5 with truth 0: foreground, as ssd.pytorch and torchvision; the crowd truth 2 is
  # never matched and the prior it covers is ignored.
  np.testing.assert_array_equal(result.labels, [FOREGROUND, FOREGROUND, IGNORE])
  empty = match_ssd(priors, gt, np.zeros(3, bool))
  np.testing.assert_array_equal(empty.labels, [BACKGROUND] * 3)
  none = match_ssd(priors, np.zeros((0, 4), np.float32), np.zeros(0, bool))
  np.testing.assert_array_equal(none.labels, [BACKGROUND] * 3)


def encode_with_variances(matched, priors, variances=(0.1, 0.2)):
  """The paper's / ssd.pytorch's `encode`: centre offsets over (variance * prior size), log sizes over variance."""
  g_c = ((matched[:, :2] + matched[:, 2:]) / 2 - (priors[:, :2] + priors[:, 2:]) / 2)
  g_c /= variances[0] * (priors[:, 2:] - priors[:, :2])
  g_wh = np.log((matched[:, 2:] - matched[:, :2]) / (priors[:, 2:] - priors[:, :2])) / variances[1]
  return np.concatenate([g_c, g_wh], axis=1)


def test_variances_are_encode_boxes_with_weights_10_10_5_5():
  rng = np.random.default_rng(0)
  priors = PRIORS[rng.choice(len(PRIORS), 50, replace=False)]
  xy = rng.uniform(0, 50, (50, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(2, 30, (50, 2))], axis=1).astype(np.float32)
  deltas = encode_boxes(boxes, priors, weights=(10, 10, 5, 5))
  np.testing.assert_allclose(deltas, encode_with_variances(boxes.astype(np.float64), priors.astype(np.float64)),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(decode_boxes(deltas, priors, weights=(10, 10, 5, 5)), boxes, atol=1e-3)
  assert jax.jit(lambda b, p: encode_boxes(b, p, weights=(10, 10, 5, 5)))(boxes, priors).shape == (50, 4)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_other_thresholds_match_the_transcription(threshold):
  rng = np.random.default_rng(11)
  gt, valid = random_truths(rng, m=5)
  result = match_ssd(PRIORS, gt, valid, threshold=threshold)
  labels, _, _ = ssd_match_reference(PRIORS, gt, valid, threshold=threshold)
  np.testing.assert_array_equal(result.labels, labels)
