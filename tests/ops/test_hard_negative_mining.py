"""SSD's hard negative mining: exactly 3 negatives per positive, the hardest ones, ties by index, no objects ->
no negatives, never an ignored entry; fixed-size under jit and vmap."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdet.ops.matching import BACKGROUND, FOREGROUND, IGNORE
from jaxdet.ops.sampling import hard_negative_mining


def mining_reference(losses, labels, ratio=3.0):
  """NumPy: the negatives sorted by loss, highest first, equal losses by index; the first floor(ratio * #fg)."""
  negatives = np.nonzero(labels == BACKGROUND)[0]
  order = negatives[np.argsort(-losses[negatives], kind="stable")]
  chosen = np.zeros(len(labels), bool)
  chosen[order[:int(np.floor(ratio * np.sum(labels == FOREGROUND)))]] = True
  return chosen


def random_case(seed, n=300, fg=7, ignore=20):
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.array([FOREGROUND] * fg + [IGNORE] * ignore + [BACKGROUND] * (n - fg - ignore)))
  losses = rng.exponential(1.0, n).astype(np.float32)
  losses[rng.choice(n, 40)] = 0.5  # plenty of exact ties
  return losses, labels.astype(np.int32)


@pytest.mark.parametrize("seed", range(4))
def test_exactly_three_negatives_per_positive_the_hardest(seed):
  losses, labels = random_case(seed)
  chosen = np.asarray(jax.jit(hard_negative_mining)(losses, labels))
  assert chosen.sum() == 3 * 7
  assert not np.any(chosen & (labels != BACKGROUND))
  np.testing.assert_array_equal(chosen, mining_reference(losses, labels))
  assert losses[chosen].min() >= losses[(labels == BACKGROUND) & ~chosen].max()


def test_ties_are_broken_by_lower_index():
  labels = np.array([FOREGROUND, BACKGROUND, BACKGROUND, IGNORE, BACKGROUND, BACKGROUND, BACKGROUND], np.int32)
  losses = np.array([9.0, 1.0, 1.0, 5.0, 1.0, 2.0, 1.0], np.float32)
  chosen = np.asarray(hard_negative_mining(losses, labels))
  np.testing.assert_array_equal(np.nonzero(chosen)[0], [1, 2, 5])  # the 2.0, then the first two of the 1.0s


def test_images_without_objects_get_no_negatives():
  labels = np.full(50, BACKGROUND, np.int32)
  chosen = hard_negative_mining(np.random.default_rng(0).uniform(size=50), labels)
  assert not np.any(chosen)


def test_too_few_negatives_takes_them_all_and_ratio_is_configurable():
  labels = np.array([FOREGROUND] * 4 + [BACKGROUND] * 5 + [IGNORE] * 3, np.int32)
  losses = np.arange(12, dtype=np.float32)
  np.testing.assert_array_equal(hard_negative_mining(losses, labels), labels == BACKGROUND)
  chosen = np.asarray(hard_negative_mining(losses, labels, negative_ratio=0.5))
  np.testing.assert_array_equal(np.nonzero(chosen)[0], [7, 8])


def test_vmaps_over_images_and_passes_no_gradient_through_the_ranking():
  cases = [random_case(s, fg=f) for s, f in enumerate((0, 3, 10))]
  losses = jnp.stack([c[0] for c in cases])
  labels = jnp.stack([c[1] for c in cases])
  chosen = jax.jit(jax.vmap(hard_negative_mining))(losses, labels)
  assert chosen.shape == (3, 300)
  np.testing.assert_array_equal(chosen.sum(axis=1), [0, 9, 30])
  for i in range(3):
    np.testing.assert_array_equal(chosen[i], mining_reference(*cases[i]))
  grad = jax.grad(lambda l: jnp.sum(jnp.where(hard_negative_mining(l, labels[2]), l, 0.0)))(losses[2])
  np.testing.assert_array_equal(grad, np.asarray(chosen[2], np.float32))


@given(labels=hnp.arrays(np.int32, st.integers(1, 60), elements=st.sampled_from([FOREGROUND, BACKGROUND, IGNORE])),
       seed=st.integers(0, 2**16), ratio=st.sampled_from([1.0, 2.5, 3.0]))
def test_count_is_min_of_ratio_times_positives_and_negatives(labels, seed, ratio):
  losses = np.random.default_rng(seed).integers(0, 4, labels.shape).astype(np.float32)  # many ties
  chosen = np.asarray(hard_negative_mining(losses, labels, negative_ratio=ratio))
  want = min(int(np.floor(ratio * np.sum(labels == FOREGROUND))), int(np.sum(labels == BACKGROUND)))
  assert chosen.sum() == want
  np.testing.assert_array_equal(chosen, mining_reference(losses, labels, ratio))
