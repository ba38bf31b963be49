"""Balanced sampler: counts, fractions, exclusions, determinism and uniformity."""

from __future__ import annotations

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdet.ops.matching import BACKGROUND, FOREGROUND, IGNORE
from jaxdet.ops.sampling import sample_balanced, sample_fast_rcnn, sample_rpn


def _labels(num_fg, num_bg, num_ignore, seed=0):
  labels = np.array([FOREGROUND] * num_fg + [BACKGROUND] * num_bg + [IGNORE] * num_ignore, np.int32)
  return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("num_fg,num_bg,want_fg,want_bg", [
    (500, 5000, 128, 128),  # plenty of both: half and half
    (20, 5000, 20, 236),    # few foreground: background fills the budget
    (500, 30, 128, 30),     # few background: foreground stays capped at the fraction
    (0, 0, 0, 0),
])
def test_rpn_counts(num_fg, num_bg, want_fg, want_bg):
  labels = _labels(num_fg, num_bg, 300)
  chosen = np.asarray(jax.jit(lambda l, k: sample_rpn(l, key=k))(labels, jax.random.key(0)))
  assert np.sum(chosen & (labels == FOREGROUND)) == want_fg
  assert np.sum(chosen & (labels == BACKGROUND)) == want_bg
  assert not np.any(chosen & (labels == IGNORE))


def test_fast_rcnn_quarter_foreground():
  labels = _labels(200, 2000, 0)
  chosen = np.asarray(sample_fast_rcnn(labels, key=jax.random.key(1)))
  assert chosen.sum() == 128
  assert np.sum(chosen & (labels == FOREGROUND)) == 32


def test_deterministic_given_key_and_different_across_keys():
  labels = _labels(300, 3000, 10)
  a = np.asarray(sample_rpn(labels, key=jax.random.key(7)))
  b = np.asarray(sample_rpn(labels, key=jax.random.key(7)))
  c = np.asarray(sample_rpn(labels, key=jax.random.key(8)))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_selection_is_uniform_over_candidates():
  labels = np.array([FOREGROUND] * 8 + [BACKGROUND] * 8, np.int32)
  keys = jax.random.split(jax.random.key(0), 4000)
  chosen = np.asarray(jax.vmap(lambda k: sample_balanced(labels, key=k, num_samples=4, positive_fraction=0.5))(keys))
  freq = chosen.mean(axis=0)
  # Each candidate is drawn with probability 2/8; 4000 draws give a standard error of about 0.007.
  np.testing.assert_allclose(freq, 0.25, atol=0.03)


_sample = jax.jit(sample_balanced, static_argnames=("num_samples", "positive_fraction"))


@given(hnp.arrays(np.int32, 300, elements=st.sampled_from([FOREGROUND, BACKGROUND, IGNORE])),
       st.sampled_from([(256, 0.5), (128, 0.25), (64, 1.0), (512, 0.5)]), st.integers(0, 2**31 - 1))
def test_counts_follow_the_budget_rule(labels, preset, seed):
  num_samples, fraction = preset
  chosen = np.asarray(_sample(labels, key=jax.random.key(seed), num_samples=num_samples,
                              positive_fraction=fraction))
  num_fg, num_bg = np.sum(labels == FOREGROUND), np.sum(labels == BACKGROUND)
  want_fg = min(num_fg, int(num_samples * fraction))  # torchvision's BalancedPositiveNegativeSampler rule
  assert np.sum(chosen & (labels == FOREGROUND)) == want_fg
  assert np.sum(chosen & (labels == BACKGROUND)) == min(num_bg, num_samples - want_fg)
  assert not np.any(chosen & (labels == IGNORE))


class SamplingVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_per_image_keys_under_vmap(self):
    labels = np.stack([_labels(40, 400, 20, seed=s) for s in range(3)])
    key = jax.random.key(3)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(3))  # per-image keys, as CONVENTIONS asks
    chosen = self.variant(jax.vmap(lambda l, k: sample_rpn(l, key=k)))(labels, keys)
    chex.assert_shape(chosen, (3, 460))
    chex.assert_type(chosen, bool)
    chosen = np.asarray(chosen)
    np.testing.assert_array_equal(chosen.sum(axis=1), 256)
    np.testing.assert_array_equal(np.sum(chosen & (labels == FOREGROUND), axis=1), 40)
    for b in range(3):  # vmapped with folded keys = one image at a time with the same key
      np.testing.assert_array_equal(chosen[b], np.asarray(sample_rpn(labels[b], key=keys[b])))
