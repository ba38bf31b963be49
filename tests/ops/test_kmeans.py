"""YOLOv2 dimension clusters."""

import jax
import jax.numpy as jnp
import numpy as np

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
