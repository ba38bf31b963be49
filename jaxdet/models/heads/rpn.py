"""The Region Proposal Network (Ren et al. 2015, sec. 3.1; course C): head, anchor targets, minibatch and loss.

The head slides a 3x3 convolution over a feature map, then two sibling 1x1 convolutions give, for each of the A
anchors of a cell, an objectness (the paper's 2-way softmax, or one sigmoid logit) and four deltas (dx, dy, dw, dh).
With FPN one head is shared by every level.

Training (sec. 3.1.2): an anchor is positive with IoU > 0.7 to a ground truth or when it is a ground truth's best
anchor, negative with IoU < 0.3 to all, otherwise ignored; anchors crossing the image border are left out of
training (sec. 3.3: "we ignore all cross-boundary anchors"); each image contributes 256 sampled anchors with up to
half positive. Loss: classification over the sampled anchors plus smooth L1 (sigma = 3, beta = 1/9 as the
reference code) over the positives' deltas, both divided by the number of sampled anchors — the reference code's
normalisation, which the paper's footnote says is about lambda = 10 with N_reg ~ 2,400 anchor locations.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import Conv
from jaxdet.ops.coders import encode_boxes
from jaxdet.ops.losses import sigmoid_binary_cross_entropy, smooth_l1_loss, softmax_cross_entropy
from jaxdet.ops.matching import FOREGROUND, IGNORE, match_rpn
from jaxdet.ops.sampling import sample_balanced

_INIT = nn.initializers.normal(0.01)  # the paper: new layers from a zero-mean Gaussian with std 0.01


class RPNHead(nn.Module):
  """Returns `(objectness [B, N, K], deltas [B, N, 4])` over the maps, N = sum_l H_l W_l A (levels in order).

  K = 2 (background, object) logits for the softmax objectness, 1 logit for the sigmoid one. Anchor order within
  a level is `(i * W + j) * A + a`, as `jaxdet.ops.anchors` lays anchors out.
  """

  num_anchors: int
  features: int = 256
  softmax: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    conv = Conv(self.features, (3, 3), padding=1, kernel_init=_INIT, dtype=self.dtype, name="conv")
    k = 2 if self.softmax else 1
    cls = Conv(self.num_anchors * k, (1, 1), kernel_init=_INIT, dtype=self.dtype, name="objectness")
    box = Conv(self.num_anchors * 4, (1, 1), kernel_init=_INIT, dtype=self.dtype, name="deltas")
    objectness, deltas = [], []
    for x in maps:
      y = nn.relu(conv(x))
      b = x.shape[0]
      objectness.append(cls(y).reshape(b, -1, k))
      deltas.append(box(y).reshape(b, -1, 4))
    return (jnp.concatenate(objectness, axis=1).astype(jnp.float32),
            jnp.concatenate(deltas, axis=1).astype(jnp.float32))


def objectness_score(logits: jax.Array) -> jax.Array:
  """Returns `[...]` the probability that an anchor holds an object from `[..., K]` logits (K = 2 or 1)."""
  if logits.shape[-1] == 2:
    return jax.nn.softmax(logits, axis=-1)[..., 1]
  return jax.nn.sigmoid(logits[..., 0])


def inside_image(anchors: jax.Array, image_shape: tuple[int, int], allowed_border: float = 0.0) -> jax.Array:
  """Returns bool `[N]`: anchors lying within the image, up to `allowed_border` pixels outside it."""
  h, w = image_shape
  return ((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border) &
          (anchors[:, 2] <= w + allowed_border) & (anchors[:, 3] <= h + allowed_border))


def rpn_targets(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, gt_crowd: jax.Array, *,
                image_shape: tuple[int, int], ignore_border: bool = True,
                allowed_border: float = 0.0) -> dict[str, jax.Array]:
  """Returns one image's RPN anchor targets (vmap for a batch): `labels [N]` (1 / 0 / -1) and `deltas [N, 4]`.

  `match_rpn` labels the anchors (IoU >= 0.7 positive, < 0.3 negative, each ground truth's best anchors positive,
  crowd-covered anchors ignored). With `ignore_border`, anchors crossing the image border (beyond
  `allowed_border`) take no part: they are ignored and not candidates for a ground truth's best anchor, as the
  reference code removes them before matching. `deltas` encodes each anchor's matched ground truth with weights
  (1, 1, 1, 1) (zero where not positive).
  """
  if ignore_border:
    usable = inside_image(anchors, image_shape, allowed_border)
    anchors_for_matching = jnp.where(usable[:, None], anchors, 0.0)  # degenerate anchors are never matched
  else:
    anchors_for_matching = anchors
  match = match_rpn(anchors_for_matching, gt_boxes, gt_valid, gt_crowd)
  deltas = encode_boxes(gt_boxes[match.matched_gt], anchors)
  positive = match.labels == FOREGROUND
  return {"labels": match.labels, "deltas": jnp.where(positive[:, None], deltas, 0.0)}


def sample_anchors(labels: jax.Array, *, key: jax.Array, num_samples: int = 256,
                   positive_fraction: float = 0.5) -> jax.Array:
  """Returns int32 `[N]` minibatch labels: 1 / 0 for sampled positives / negatives, -1 for the rest.

  `labels [B, N]` gives a batch (each image sampled on its own, keys from `fold_in(key, image)`).
  """
  if labels.ndim == 2:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(labels.shape[0]))
    return jax.vmap(lambda l, k: sample_anchors(l, key=k, num_samples=num_samples,
                                                positive_fraction=positive_fraction))(labels, keys)
  chosen = sample_balanced(labels, key=key, num_samples=num_samples, positive_fraction=positive_fraction)
  return jnp.where(chosen, labels, IGNORE)


def rpn_loss(objectness: jax.Array, deltas: jax.Array, sampled_labels: jax.Array, target_deltas: jax.Array, *,
             beta: float = 1.0 / 9.0) -> tuple[jax.Array, jax.Array]:
  """Returns `(classification, regression)` RPN losses over a batch, each divided by the sampled anchors.

  Args:
    objectness: `[B, N, K]` logits (K = 2 softmax, K = 1 sigmoid).
    deltas: `[B, N, 4]` predicted deltas; target_deltas: `[B, N, 4]`.
    sampled_labels: int `[B, N]` from `sample_anchors` (1 / 0 sampled, -1 not sampled).
    beta: smooth-L1 transition (1/9: the reference code's sigma = 3).
  """
  sampled = sampled_labels != IGNORE
  num_sampled = jnp.maximum(jnp.sum(sampled), 1).astype(jnp.float32)
  if objectness.shape[-1] == 2:
    cls = softmax_cross_entropy(objectness, jnp.where(sampled, sampled_labels, 0))
  else:
    cls = sigmoid_binary_cross_entropy(objectness[..., 0], (sampled_labels == FOREGROUND).astype(jnp.float32))
  classification = jnp.sum(jnp.where(sampled, cls, 0.0)) / num_sampled
  positive = sampled_labels == FOREGROUND
  reg = jnp.sum(smooth_l1_loss(deltas - target_deltas, beta=beta), axis=-1)
  regression = jnp.sum(jnp.where(positive, reg, 0.0)) / num_sampled
  return classification, regression

