"""CornerNet radius and gaussian splats against a NumPy transcription of CenterNet's target code."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdet.ops.heatmaps import gaussian_radius, splat_gaussians


def radius_reference(h, w, o=0.7):
  """CenterNet's `gaussian_radius`, transcribed (roots divided by 2, as in the reference code)."""
  b1, c1 = h + w, w * h * (1 - o) / (1 + o)
  r1 = (b1 + np.sqrt(b1**2 - 4 * c1)) / 2
  b2, c2 = 2 * (h + w), (1 - o) * w * h
  r2 = (b2 + np.sqrt(b2**2 - 4 * 4 * c2)) / 2
  a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
  r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
  return min(r1, r2, r3)


def splat_reference(centers, radii, labels, shape, num_classes):
  """CenterNet's `draw_umich_gaussian` per object into its class channel, with np.maximum."""
  h, w = shape
  heat = np.zeros((num_classes, h, w), np.float32)
  for (cy, cx), r, c in zip(centers, radii, labels):
    d = 2 * r + 1
    sigma = d / 6
    ys, xs = np.ogrid[-r:r + 1, -r:r + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))
    left, right = min(cx, r), min(w - cx, r + 1)
    top, bottom = min(cy, r), min(h - cy, r + 1)
    if right <= -left or bottom <= -top:
      continue
    region = heat[c, cy - top:cy + bottom, cx - left:cx + right]
    patch = g[r - top:r + bottom, r - left:r + right]
    np.maximum(region, patch, out=region)
  return heat.transpose(1, 2, 0)


@given(st.floats(0.5, 200), st.floats(0.5, 200), st.sampled_from([0.5, 0.7, 0.9]))
def test_radius_matches_reference(h, w, o):
  np.testing.assert_allclose(gaussian_radius(jnp.float32(h), jnp.float32(w), min_overlap=o),
                             radius_reference(h, w, o), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("h, w", [(0.0, 5.0), (-3.0, 4.0), (np.nan, 2.0), (np.inf, 3.0)])
def test_radius_of_degenerate_box_is_zero(h, w):
  assert float(gaussian_radius(jnp.float32(h), jnp.float32(w))) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_splat_matches_reference(seed):
  rng = np.random.default_rng(seed)
  shape, num_classes, m = (17, 23), 3, 9
  centers = np.stack([rng.integers(0, shape[0], m), rng.integers(0, shape[1], m)], axis=1)
  radii = rng.integers(0, 6, m)
  labels = rng.integers(0, num_classes, m)
  valid = np.arange(m) < 7
  got = splat_gaussians(jnp.asarray(centers), jnp.asarray(radii), jnp.asarray(labels), jnp.asarray(valid),
                        shape=shape, num_classes=num_classes)
  chex.assert_shape(got, (*shape, num_classes))
  want = splat_reference(centers[valid], radii[valid], labels[valid], shape, num_classes)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert np.all(np.asarray(got)[centers[valid, 0], centers[valid, 1], labels[valid]] == 1.0)


def test_splat_without_objects_is_empty():
  got = splat_gaussians(jnp.zeros((4, 2), jnp.int32), jnp.ones(4, jnp.int32), jnp.zeros(4, jnp.int32),
                        jnp.zeros(4, bool), shape=(8, 8), num_classes=2)
  assert float(jnp.max(got)) == 0.0


def test_centres_near_and_outside_the_border_splat_their_inside_part():
  centers = np.array([[0, 0], [9, 3], [-2, 4], [4, 12]])
  radii = np.array([2, 3, 3, 3])
  got = splat_gaussians(jnp.asarray(centers), jnp.asarray(radii), jnp.zeros(4, jnp.int32), jnp.ones(4, bool),
                        shape=(10, 10), num_classes=1)
  want = np.zeros((10, 10, 1), np.float32)
  for (cy, cx), r in zip(centers, radii):
    sigma = (2 * r + 1) / 6
    for y in range(10):
      for x in range(10):
        if abs(y - cy) <= r and abs(x - cx) <= r:
          want[y, x, 0] = max(want[y, x, 0], np.exp(-((x - cx)**2 + (y - cy)**2) / (2 * sigma**2)))
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert float(got[1, 4, 0]) > 0 and float(got[4, 9, 0]) > 0  # tails of the two centres off the map


def test_labels_out_of_range_splat_nothing():
  got = splat_gaussians(jnp.array([[2, 2], [5, 5]]), jnp.array([1, 1]), jnp.array([3, -1]), jnp.ones(2, bool),
                        shape=(8, 8), num_classes=2)
  assert float(jnp.max(got)) == 0.0
