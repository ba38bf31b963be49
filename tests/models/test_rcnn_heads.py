"""R-CNN's post-hoc heads: SVMs with hard negative mining, ridge box regression and its targets, region warping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.detectors.rcnn import context_boxes, warp_regions
from jaxdet.models.heads.bbox_ridge import bbox_targets, fit_bbox_regressors, ridge_solve
from jaxdet.models.heads.linear_svm import mine_hard_negatives, svm_objective, train_svms


def _planted(seed: int = 0):
  """2-D features: positives around (2, 2), easy negatives around (-3, -3), one hard negative at (1.5, 1.2)."""
  rng = np.random.default_rng(seed)
  pos = rng.normal((2.0, 2.0), 0.3, (20, 2))
  easy = rng.normal((-3.0, -3.0), 0.5, (400, 2))
  hard = np.array([[1.5, 1.2]])
  x = np.concatenate([pos, easy, hard]).astype(np.float32)
  y = np.concatenate([np.ones(20), -np.ones(401)]).astype(np.float32)[:, None]
  return x, y, len(x) - 1


def test_planted_hard_negative_is_mined_then_scored_below_zero():
  x, y, hard = _planted()
  # The refit must move far (the bias to about -7 on these 2-D points): at the first fit's rate, not a tenth.
  result = train_svms(x, y, key=jax.random.PRNGKey(1), l2=1e-4, positive_weight=1.0, initial_negatives=10,
                      max_rounds=6, steps=500, learning_rate=0.5, refit_scale=1.0)
  assert result.added[0] >= 1  # the first fit (10 random negatives, not the hard one) leaves it inside the margin
  assert result.cache[hard, 0]  # mined into the cache
  scores = x @ result.kernel + result.bias
  assert scores[hard, 0] < 0  # and then classified as a negative
  assert np.all(scores[:20, 0] > 0) and np.all(scores[20:-1, 0] < 0)
  assert result.added[-1] == 0 and result.hard_left == 0  # mining converged


def test_mining_rule_and_objective_match_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 3)).astype(np.float32)
  y = rng.choice([-1.0, 0.0, 1.0], size=(50, 2)).astype(np.float32)
  params = {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "bias": jnp.asarray([0.1, -0.2])}
  cache = rng.uniform(size=(50, 2)) < 0.5
  new_cache, added = mine_hard_negatives(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(cache))
  s = x @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
  hard = (y < 0) & (s > -1.0001) & ~cache
  easy = (y < 0) & cache & (s < -1.2)
  np.testing.assert_array_equal(np.asarray(new_cache), (cache | hard) & ~easy)
  np.testing.assert_array_equal(np.asarray(added), hard.sum(0))
  want = 0.0
  for c in range(2):
    use = cache[:, c] & (y[:, c] != 0)
    w = np.where(y[use, c] > 0, 2.0, 1.0)
    want += np.sum(w * np.maximum(0, 1 - y[use, c] * s[use, c])) / max(np.sum(y[:, c] != 0), 1)
  want += 0.5 * 0.1 * np.sum(np.asarray(params["kernel"]) ** 2)
  got = svm_objective(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(cache), l2=0.1, positive_weight=2.0)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_bbox_targets_are_rcnn_equations():
  p = np.array([[10, 20, 30, 60], [0, 0, 8, 4]], np.float32)
  g = np.array([[12, 18, 34, 66], [1, 1, 7, 5]], np.float32)
  pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
  gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
  px, py = p[:, 0] + pw / 2, p[:, 1] + ph / 2
  gx, gy = g[:, 0] + gw / 2, g[:, 1] + gh / 2
  want = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], 1)
  np.testing.assert_allclose(bbox_targets(p, g), want, rtol=1e-6)


def test_ridge_regression_recovers_a_linear_map_per_class():
  rng = np.random.default_rng(2)
  n, f = 300, 6
  x = rng.normal(size=(n, f)).astype(np.float32)
  w_true = rng.normal(size=(f, 4)).astype(np.float32) * 0.1
  props = np.tile([[20.0, 20.0, 60.0, 80.0]], (n, 1)).astype(np.float32)
  t = x @ w_true + 0.05
  # ground truth built from the targets: the inverse of the R-CNN parametrisation
  pw, ph, px, py = 40.0, 60.0, 40.0, 50.0
  gx, gy, gw, gh = px + pw * t[:, 0], py + ph * t[:, 1], pw * np.exp(t[:, 2]), ph * np.exp(t[:, 3])
  gt = np.stack([gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2], 1).astype(np.float32)
  labels = rng.integers(0, 2, n)
  iou = np.where(rng.uniform(size=n) < 0.8, 0.7, 0.5)  # 20% below the 0.6 threshold: not used
  t_noisy = np.where((iou <= 0.6)[:, None], 5.0, 0.0)  # ... and they would spoil the fit if they were
  gt = np.where((iou <= 0.6)[:, None], gt + t_noisy, gt)
  kernel, bias, counts = fit_bbox_regressors(x, props, gt, labels, iou, num_classes=3, l2=1e-4)
  assert counts.tolist() == [int(np.sum((labels == c) & (iou > 0.6))) for c in range(3)]
  for c in range(2):
    np.testing.assert_allclose(kernel[:, 4 * c:4 * c + 4], w_true, atol=2e-3)
    np.testing.assert_allclose(bias[4 * c:4 * c + 4], 0.05, atol=2e-3)
  assert np.all(kernel[:, 8:] == 0) and np.all(bias[8:] == 0)  # no samples: no move
  # the closed form against NumPy's least squares on the same normal equations
  w, b = ridge_solve(jnp.asarray(x), jnp.asarray(t), jnp.ones(n), jnp.float32(2.0))
  xb = np.concatenate([x, np.ones((n, 1))], 1).astype(np.float64)
  reg = np.diag([2.0] * f + [0.0])
  sol = np.linalg.solve(xb.T @ xb + reg, xb.T @ t)
  np.testing.assert_allclose(np.asarray(w), sol[:-1], atol=1e-4)
  np.testing.assert_allclose(np.asarray(b), sol[-1], atol=1e-4)


def test_warp_with_context_padding():
  boxes = jnp.array([[8.0, 4.0, 24.0, 36.0]])
  np.testing.assert_allclose(context_boxes(boxes, warp_size=32, context=4),
                             [[8 - 16 / 24 * 4, 4 - 32 / 24 * 4, 24 + 16 / 24 * 4, 36 + 32 / 24 * 4]], rtol=1e-6)
  # an image whose value is its column index: the warp samples the enlarged box's cell centres
  image = jnp.broadcast_to(jnp.arange(64, dtype=jnp.float32)[None, None, :, None], (1, 48, 64, 1))
  out = warp_regions(image, jnp.array([[16.0, 8.0, 48.0, 40.0]]), jnp.array([0]), warp_size=16, context=0)
  np.testing.assert_allclose(out[0, 0, :, 0], 16 + (np.arange(16) + 0.5) * 2 - 0.5, atol=1e-4)
  # context reaching beyond the image reads zeros there (the normalised mean)
  edge = warp_regions(jnp.ones((1, 16, 16, 1)), jnp.array([[0.0, 0.0, 8.0, 8.0]]), jnp.array([0]), warp_size=8,
                      context=2)
  assert float(edge[0, 0, 0, 0]) == 0.0 and float(edge[0, 4, 4, 0]) == 1.0
