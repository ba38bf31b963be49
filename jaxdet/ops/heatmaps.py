"""Keypoint heatmap targets (CornerNet / CenterNet): the gaussian radius of a box and gaussian splats."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_radius(height: jax.Array, width: jax.Array, *, min_overlap: float = 0.7) -> jax.Array:
  """Returns `[...]` the CornerNet radius: how far a corner may move and the box still overlap by `min_overlap`.

  The minimum of three cases (both corners move inward, outward, or one each), solved as quadratics in the
  radius r. This is the form of the CornerNet and CenterNet reference code, which divides every root by 2 rather
  than by 2a; CenterNet's published numbers were tuned with it, so it is kept. Sizes in output cells.
  Degenerate (zero, negative, non-finite) sizes give radius 0.
  """
  h = jnp.maximum(jnp.nan_to_num(jnp.asarray(height, jnp.float32), posinf=0.0), 0.0)
  w = jnp.maximum(jnp.nan_to_num(jnp.asarray(width, jnp.float32), posinf=0.0), 0.0)
  o = min_overlap
  b1, c1 = h + w, w * h * (1 - o) / (1 + o)
  r1 = (b1 + jnp.sqrt(jnp.maximum(b1**2 - 4 * c1, 0.0))) / 2
  b2, c2 = 2 * (h + w), (1 - o) * w * h
  r2 = (b2 + jnp.sqrt(jnp.maximum(b2**2 - 16 * c2, 0.0))) / 2
  a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
  r3 = (b3 + jnp.sqrt(jnp.maximum(b3**2 - 4 * a3 * c3, 0.0))) / 2
  return jnp.minimum(jnp.minimum(r1, r2), r3)


def splat_gaussians(centers: jax.Array, radii: jax.Array, labels: jax.Array, valid: jax.Array, *,
                    shape: tuple[int, int], num_classes: int) -> jax.Array:
  """Returns `[h, w, num_classes]` heatmap: each object's gaussian in its class channel, element-wise max.

  Object m puts exp(-(dx^2 + dy^2) / (2 sigma^2)) on the cells within `radii[m]` (Chebyshev distance) of its
  integer centre cell, with sigma = (2 r + 1) / 6 (CenterNet's `draw_umich_gaussian`); the centre cell gets
  exactly 1. Overlapping gaussians of one class combine by element-wise maximum. Centres outside the map splat the
  part that falls inside.

  Args:
    centers: int `[M, 2]` (row i, column j) centre cells. radii: int `[M]` radius >= 0.
    labels: int `[M]` class index; objects with a label outside `[0, num_classes)` add nothing.
    valid: bool `[M]`; invalid objects add nothing.
    shape: (h, w) of the output map (static). num_classes: static.
  """
  h, w = shape
  centers = jnp.asarray(centers, jnp.int32)
  radii = jnp.maximum(jnp.asarray(radii, jnp.int32), 0)
  sigma = (2.0 * radii + 1.0) / 6.0
  dy = jnp.arange(h)[None, :, None] - centers[:, 0, None, None]
  dx = jnp.arange(w)[None, None, :] - centers[:, 1, None, None]
  r = radii[:, None, None]
  inside = (jnp.abs(dy) <= r) & (jnp.abs(dx) <= r) & jnp.asarray(valid, bool)[:, None, None]
  g = jnp.exp(-(dx * dx + dy * dy).astype(jnp.float32) / (2.0 * sigma[:, None, None] ** 2))
  g = jnp.where(inside, g, 0.0)  # [M, h, w]
  heatmap = jnp.zeros((h, w, num_classes), jnp.float32)
  # Labels outside [0, num_classes) splat nothing (their index is clamped only to stay in bounds).
  labels = jnp.asarray(labels, jnp.int32)
  g = jnp.where(((labels >= 0) & (labels < num_classes))[:, None, None], g, 0.0)
  return heatmap.at[:, :, jnp.clip(labels, 0, num_classes - 1)].max(jnp.transpose(g, (1, 2, 0)))
