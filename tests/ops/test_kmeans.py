"""YOLOv2 dimension clusters: a NumPy Lloyd transcription, invariants, padding and degenerate sizes, jit."""

import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxdet.ops.kmeans import kmeans_anchors, wh_iou


def numpy_kmeans(wh, init, iters):
  c = wh[init].astype(np.float64)
  for _ in range(iters):
    inter = np.minimum(wh[:, None, 0], c[None, :, 0]) * np.minimum(wh[:, None, 1], c[None, :, 1])
    iou = inter / (wh[:, 0:1] * wh[:, 1:2] + (c[:, 0] * c[:, 1])[None] - inter)
    a = iou.argmax(1)
    for k in range(len(c)):
      if np.any(a == k):
        c[k] = wh[a == k].mean(0)
  return c[np.argsort(c[:, 0] * c[:, 1])]


def clustered_wh(seed=0):
  rng = np.random.default_rng(seed)
  centres = np.array([[10, 12], [30, 60], [80, 40], [150, 160]], np.float32)
  return np.concatenate([c * rng.uniform(0.85, 1.15, (50, 2)) for c in centres]).astype(np.float32)


def test_matches_numpy_lloyd_from_same_init():
  wh = clustered_wh()
  key = jax.random.PRNGKey(3)
  anchors, mean_iou = kmeans_anchors(wh, 4, key=key, num_iters=20)
  priority = np.asarray(jax.random.uniform(key, (len(wh),)))
  init = np.argsort(-priority, kind="stable")[:4]
  np.testing.assert_allclose(anchors, numpy_kmeans(wh, init, 20), rtol=1e-4)
  assert 0.8 < float(mean_iou) <= 1.0


def test_deterministic_and_better_than_random_anchors():
  wh = clustered_wh(1)
  a1, m1 = kmeans_anchors(wh, 4, key=jax.random.PRNGKey(0))
  a2, m2 = kmeans_anchors(wh, 4, key=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(a1, a2)
  random_anchors = jnp.asarray(np.random.default_rng(0).uniform(5, 200, (4, 2)), jnp.float32)
  assert float(m1) > float(jnp.mean(jnp.max(wh_iou(wh, random_anchors), axis=1)))
  assert np.all(np.diff(np.asarray(a1[:, 0] * a1[:, 1])) >= 0)


def test_padding_is_ignored_and_jittable():
  wh = clustered_wh(2)
  padded = np.concatenate([wh, np.zeros((20, 2), np.float32)])
  valid = np.arange(len(padded)) < len(wh)
  f = jax.jit(lambda x, v, k: kmeans_anchors(x, 3, key=k, valid=v))
  anchors, mean_iou = f(padded, valid, jax.random.PRNGKey(1))
  assert np.all(np.asarray(anchors) > 1) and np.isfinite(float(mean_iou))


def test_wh_iou_against_numpy_and_its_gradient():
  rng = np.random.default_rng(4)
  a, b = rng.uniform(1, 50, (6, 2)).astype(np.float32), rng.uniform(1, 50, (3, 2)).astype(np.float32)
  inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
  want = inter / (a[:, None, 0] * a[:, None, 1] + b[None, :, 0] * b[None, :, 1] - inter)
  np.testing.assert_allclose(wh_iou(a, b), want, rtol=1e-6)
  check_grads(wh_iou, (jnp.asarray(a), jnp.asarray(b)), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-2)
  zero = wh_iou(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32))
  np.testing.assert_array_equal(zero, 0.0)  # 0 / 0 is defined as no overlap


_kmeans_jit = jax.jit(kmeans_anchors, static_argnames=("k", "num_iters"))


@given(hnp.arrays(np.float32, (40, 2), elements=st.floats(1, 300, width=32)), st.sampled_from([1, 4]),
       st.integers(0, 99))
def test_anchor_invariants(wh, k, seed):
  anchors, mean_iou = _kmeans_jit(wh, k=k, key=jax.random.key(seed), num_iters=10)
  chex.assert_shape(anchors, (k, 2))
  anchors = np.asarray(anchors)
  area = anchors[:, 0] * anchors[:, 1]
  assert np.all(np.diff(area) >= 0)  # sorted by area
  # Each centroid is a mean of boxes, so it lies in their bounding range; the fit is an IoU.
  assert np.all((anchors >= wh.min(0) - 1e-3) & (anchors <= wh.max(0) + 1e-3))
  assert 0.0 < float(mean_iou) <= 1.0 + 1e-6
  # The reported fit is the mean over boxes of the best IoU with the returned anchors.
  np.testing.assert_allclose(mean_iou, np.mean(np.max(np.asarray(wh_iou(wh, anchors)), axis=1)), rtol=1e-5)


def test_degenerate_rows_count_as_padding():
  wh = clustered_wh(3)
  bad = np.array([[np.nan, 5], [np.inf, 3], [0, 7], [-4, 9], [5, -1]], np.float32)
  noisy = np.concatenate([wh, bad])
  key = jax.random.key(5)
  clean = _kmeans_jit(np.concatenate([wh, np.zeros_like(bad)]), k=4, key=key, num_iters=10,
                      valid=np.arange(len(noisy)) < len(wh))
  dirty = _kmeans_jit(noisy, k=4, key=key, num_iters=10, valid=np.ones(len(noisy), bool))
  np.testing.assert_allclose(dirty[0], clean[0], rtol=1e-6)
  np.testing.assert_allclose(dirty[1], clean[1], rtol=1e-6)
  few, fit = _kmeans_jit(np.array([[10, 10], [20, 20], [np.nan, 1], [0, 0]], np.float32), k=3, key=key,
                         num_iters=10)
  np.testing.assert_allclose(few, [[0, 0], [10, 10], [20, 20]])  # fewer valid boxes than k: a (0, 0) surplus
  assert float(fit) == pytest.approx(1.0)


class KmeansVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_same_result_with_and_without_jit(self):
    wh = clustered_wh(4)
    anchors, mean_iou = self.variant(functools.partial(kmeans_anchors, k=4, num_iters=15))(wh, key=jax.random.key(2))
    chex.assert_shape(anchors, (4, 2))
    chex.assert_shape(mean_iou, ())
    chex.assert_type([anchors, mean_iou], jnp.float32)
    priority = np.asarray(jax.random.uniform(jax.random.key(2), (len(wh),)))
    init = np.argsort(-priority, kind="stable")[:4]
    np.testing.assert_allclose(anchors, numpy_kmeans(wh, init, 15), rtol=1e-4)
