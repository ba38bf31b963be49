"""Fixed-size sampling of the anchors / RoIs that carry a loss: balanced random sampling, hard negative mining."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.ops.matching import BACKGROUND, FOREGROUND


def _random_subset(candidates: jax.Array, count: jax.Array, key: jax.Array) -> jax.Array:
  """bool `[N]`: `count` entries of `candidates` chosen uniformly at random without replacement."""
  priority = jnp.where(candidates, jax.random.uniform(key, candidates.shape), -1.0)
  order = jnp.argsort(-priority)
  rank = jnp.zeros(candidates.shape, jnp.int32).at[order].set(jnp.arange(candidates.shape[0], dtype=jnp.int32))
  return candidates & (rank < count)


def sample_balanced(labels: jax.Array, *, key: jax.Array, num_samples: int,
                    positive_fraction: float) -> jax.Array:
  """Returns bool `[N]`: at most `num_samples` entries with at most `positive_fraction` of them foreground.

  Foreground (label 1) entries are drawn uniformly up to floor(num_samples * positive_fraction); the rest of the
  budget goes to background (label 0), also uniformly; ignored entries (-1) are never drawn. When there are too
  few foreground entries the background fills the remainder, as torchvision's
  `BalancedPositiveNegativeSampler`. Jittable: fixed shapes, randomness from `key`.

  Presets: RPN 256 anchors at 0.5 (Faster R-CNN); Fast R-CNN 128 RoIs at 0.25 (the course: 64 per image x 2).
  """
  labels = jnp.asarray(labels, jnp.int32)
  pos = labels == FOREGROUND
  neg = labels == BACKGROUND
  num_pos = jnp.minimum(pos.sum(), int(num_samples * positive_fraction))
  num_neg = jnp.minimum(neg.sum(), num_samples - num_pos)
  key_pos, key_neg = jax.random.split(key)
  return _random_subset(pos, num_pos, key_pos) | _random_subset(neg, num_neg, key_neg)


def sample_rpn(labels: jax.Array, *, key: jax.Array) -> jax.Array:
  """Returns bool `[N]`: the RPN minibatch of int `labels [N]`, 256 anchors with up to half foreground."""
  return sample_balanced(labels, key=key, num_samples=256, positive_fraction=0.5)


def sample_fast_rcnn(labels: jax.Array, *, key: jax.Array) -> jax.Array:
  """Returns bool `[N]`: one image's Fast R-CNN minibatch of `labels [N]`, 128 RoIs, up to a quarter foreground."""
  return sample_balanced(labels, key=key, num_samples=128, positive_fraction=0.25)


def hard_negative_mining(losses: jax.Array, labels: jax.Array, *, negative_ratio: float = 3.0) -> jax.Array:
  """Returns bool `[N]`: one image's hardest background entries, `negative_ratio` per foreground entry.

  SSD's hard negative mining (Liu et al. 2016, sec. 2.2): background (label 0) entries are ranked by their
  confidence `losses [N]` (highest first; equal losses by lower index, so the choice is deterministic) and the first
  `min(floor(negative_ratio * num_foreground), num_background)` are kept, so that negatives : positives is 3 : 1
  whenever the image has enough background. Ignored entries (-1) are never chosen. An image without foreground gets
  no negatives, as in the paper's Caffe code, ssd.pytorch and torchvision's `SSD` (such an image adds no loss).
  Fixed shapes and no gradient through the ranking: jit and vmap over images.
  """
  labels = jnp.asarray(labels, jnp.int32)
  negative = labels == BACKGROUND
  num_negative = jnp.minimum(jnp.floor(negative_ratio * jnp.sum(labels == FOREGROUND)).astype(jnp.int32),
                             jnp.sum(negative))
  key = jnp.where(negative, jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32)), -jnp.inf)
  order = jnp.argsort(-key, stable=True)
  rank = jnp.zeros(labels.shape, jnp.int32).at[order].set(jnp.arange(labels.shape[0], dtype=jnp.int32))
  return negative & (rank < num_negative)
