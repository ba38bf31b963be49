"""CenterNet heatmap peaks against a brute-force NumPy local-maximum search."""

from __future__ import annotations

import functools

import chex
import jax
import numpy as np

from jaxdet.ops.peaks import heatmap_peaks, local_maxima


def _peaks_np(heat, k):
  h, w, c = heat.shape
  found = []
  for y in range(h):
    for x in range(w):
      for ch in range(c):
        window = heat[max(0, y - 1):y + 2, max(0, x - 1):x + 2, ch]
        if heat[y, x, ch] == window.max():
          found.append((-heat[y, x, ch], (y * w + x) * c + ch, y, x, ch))
  found.sort()
  return found[:k]


def test_peaks_equal_to_brute_force():
  rng = np.random.default_rng(0)
  heat = rng.uniform(size=(2, 24, 20, 3)).astype(np.float32)
  heat[0, 5:7, 5:7, 1] = 0.99  # a plateau: every tied cell survives
  scores, classes, ys, xs = jax.jit(jax.vmap(lambda h: heatmap_peaks(h, k=30)))(heat)
  chex.assert_shape([scores, classes, ys, xs], (2, 30))
  for b in range(2):
    want = _peaks_np(heat[b], 30)
    np.testing.assert_allclose(np.asarray(scores[b]), [-f[0] for f in want])
    np.testing.assert_array_equal(np.asarray(classes[b]), [f[4] for f in want])
    np.testing.assert_array_equal(np.asarray(ys[b]), [f[2] for f in want])
    np.testing.assert_array_equal(np.asarray(xs[b]), [f[3] for f in want])


def test_local_maxima_suppresses_neighbours_and_k_larger_than_map():
  heat = np.zeros((3, 3, 1), np.float32)
  heat[1, 1, 0], heat[0, 0, 0] = 0.9, 0.5
  np.testing.assert_array_equal(np.asarray(local_maxima(heat))[..., 0], np.float32([[0, 0, 0], [0, 0.9, 0], [0, 0, 0]]))
  scores, classes, ys, xs = heatmap_peaks(heat, k=12)
  chex.assert_shape(scores, (12,))
  assert float(scores[0]) == np.float32(0.9) and (int(ys[0]), int(xs[0])) == (1, 1)
  assert np.all(np.asarray(scores[1:]) == 0)


class PeaksVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_non_finite_cells_are_neither_peaks_nor_hide_neighbours(self):
    heat = np.zeros((5, 5, 2), np.float32)
    heat[1, 1, 0], heat[1, 2, 0] = np.nan, 0.6  # NaN next to a real peak
    heat[3, 3, 1], heat[3, 4, 1] = np.inf, 0.4
    heat[0, 4, 1] = -np.inf
    scores, classes, ys, xs = self.variant(functools.partial(heatmap_peaks, k=3))(heat)
    chex.assert_shape([scores, classes, ys, xs], (3,))
    np.testing.assert_allclose(np.asarray(scores), [0.6, 0.4, 0.0])
    assert [(int(c), int(y), int(x)) for c, y, x in zip(classes[:2], ys[:2], xs[:2])] == [(0, 1, 2), (1, 3, 4)]
    assert np.all(np.isfinite(np.asarray(self.variant(local_maxima)(heat))))
