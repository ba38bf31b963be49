"""YOLOv2's dimension clusters: k-means over box (w, h) with the distance d = 1 - IoU."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def wh_iou(wh1: jax.Array, wh2: jax.Array) -> jax.Array:
  """Returns `[N, K]` IoU of `(w, h)` shapes `[N, 2]` and `[K, 2]` aligned at a common centre (YOLOv2 sec. 2)."""
  wh1 = jnp.maximum(jnp.asarray(wh1, jnp.float32), 0.0)
  wh2 = jnp.maximum(jnp.asarray(wh2, jnp.float32), 0.0)
  inter = jnp.minimum(wh1[:, None, 0], wh2[None, :, 0]) * jnp.minimum(wh1[:, None, 1], wh2[None, :, 1])
  union = (wh1[:, 0] * wh1[:, 1])[:, None] + (wh2[:, 0] * wh2[:, 1])[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def kmeans_anchors(wh: jax.Array, k: int, *, key: jax.Array, num_iters: int = 100,
                   valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Returns `(anchors [k, 2], mean_best_iou)`: k (w, h) cluster centres sorted by area, and their fit.

  Lloyd's k-means with d(box, centroid) = 1 - IoU(box, centroid) (YOLOv2's "dimension clusters"): assign each
  box to the centroid of highest shape IoU, move each centroid to the mean (w, h) of its boxes, `num_iters` times
  (a fixed count keeps it jittable). Initial centroids are k distinct valid boxes drawn with `key`, so the result
  is deterministic given the key. A cluster that loses all its boxes keeps its previous centre. With fewer than k
  valid boxes the surplus anchors are (0, 0); NaN, inf and non-positive sizes count as padding.
  `mean_best_iou` is the average over valid boxes of the IoU with their closest anchor (YOLOv2's Table 1 metric).

  Args:
    wh: `[N, 2]` box widths and heights (pixels or any unit), N >= k rows.
    k: number of anchors (static).
    key: `jax.random` key for the initialisation.
    num_iters: Lloyd iterations (static).
    valid: optional bool `[N]` mask of real boxes (padding is ignored).
  """
  wh = jnp.asarray(wh, jnp.float32)
  n = wh.shape[0]
  valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
  valid = valid & jnp.all(wh > 0, axis=-1) & jnp.all(jnp.isfinite(wh), axis=-1)
  # k distinct valid boxes, uniformly at random: top-k of random priorities among valid entries.
  priority = jnp.where(valid, jax.random.uniform(key, (n,)), -1.0)
  _, init = jax.lax.top_k(priority, k)
  safe_wh = jnp.where(valid[:, None], wh, 0.0)
  centroids = safe_wh[init]

  def step(_, c):
    assign = jnp.argmax(wh_iou(safe_wh, c), axis=1)
    onehot = jax.nn.one_hot(assign, k, dtype=jnp.float32) * valid[:, None]
    counts = onehot.sum(0)
    sums = onehot.T @ safe_wh
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c)

  centroids = jax.lax.fori_loop(0, num_iters, step, centroids)
  centroids = centroids[jnp.argsort(centroids[:, 0] * centroids[:, 1])]
  best = jnp.max(wh_iou(safe_wh, centroids), axis=1)
  mean_best = jnp.sum(jnp.where(valid, best, 0.0)) / jnp.maximum(valid.sum(), 1)
  return centroids, mean_best
