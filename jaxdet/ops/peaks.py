"""Heatmap peak extraction (CenterNet): 3x3 max-pool keeps local maxima, then top-K over classes and cells."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def local_maxima(heatmap: jax.Array, *, kernel_size: int = 3) -> jax.Array:
  """Returns the `[H, W, C]` heatmap with every value that is not the maximum of its k x k window set to 0.

  CenterNet's NMS replacement: a value survives when it equals the max-pool of its neighbourhood (plateaus keep
  every tied cell, as in the reference implementation). Non-finite values count as 0, so a NaN or inf cell
  neither becomes a peak nor hides its neighbours.
  """
  heatmap = jnp.where(jnp.isfinite(heatmap), heatmap, 0.0)
  pooled = jax.lax.reduce_window(heatmap, -jnp.inf, jax.lax.max, (kernel_size, kernel_size, 1), (1, 1, 1),
                                 "SAME")
  return jnp.where(heatmap == pooled, heatmap, 0.0)


def heatmap_peaks(heatmap: jax.Array, *, k: int = 100, kernel_size: int = 3
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Returns `(scores [k], classes [k] int32, ys [k] int32, xs [k] int32)`: the k highest local maxima.

  Args:
    heatmap: `[H, W, C]` class probabilities (after the sigmoid). vmap for batches.
    k: number of peaks (static); CenterNet uses 100. When fewer than k cells exist, the rest repeat score 0.
    kernel_size: odd max-pool window (3 in CenterNet).

  Ties in score resolve to the lower flat index (row-major y, x, class).
  """
  h, w, c = heatmap.shape
  peaks = local_maxima(jnp.asarray(heatmap, jnp.float32), kernel_size=kernel_size).reshape(-1)
  kk = min(k, peaks.shape[0])
  scores, flat = jax.lax.top_k(peaks, kk)
  if kk < k:
    scores = jnp.concatenate([scores, jnp.zeros((k - kk,), scores.dtype)])
    flat = jnp.concatenate([flat, jnp.zeros((k - kk,), flat.dtype)])
  flat = flat.astype(jnp.int32)
  classes = flat % c
  cell = flat // c
  return scores, classes, cell // w, cell % w
