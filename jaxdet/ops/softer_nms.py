"""Softer-NMS variance voting (He et al. 2019, "Bounding Box Regression with Uncertainty")."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.ops.iou import pairwise_iou

_BLOCK = 16  # kept boxes voted at once: [16, N] weights (1.3 MB at N = 20,000), never K x N (1.6 GB)


def variance_voting(boxes: jax.Array, variances: jax.Array, kept: jax.Array, *, kept_valid: jax.Array | None = None,
                    classes: jax.Array | None = None, sigma_t: float = 0.02) -> jax.Array:
  """Returns `[K, 4]` voted boxes: each kept box replaced by the variance-weighted mean of its neighbours.

  For a kept box b and every candidate b_i with IoU(b, b_i) > 0 (b itself included, weight 1):
    p_i = exp(-(1 - IoU(b, b_i))^2 / sigma_t),   b.x = sum_i (p_i / var_i.x) b_i.x / sum_i (p_i / var_i.x)
  per coordinate x (the paper's Algorithm 1, the "var voting" step applied after NMS or Soft-NMS selection).
  Low-variance (confident) coordinates and close neighbours dominate. Candidates with non-finite coordinates or
  variances, or variances <= 0, do not vote; a kept box with no voter (e.g. itself invalid) is returned as is
  (zeros if it is not finite). Differentiable in `boxes` and `variances`; memory O(16 N), never K x N.

  Args:
    boxes: `[N, 4]` xyxy candidates (before NMS).
    variances: `[N, 4]` predicted variances sigma^2 of each coordinate (`exp` of the KL-loss log-variance).
    kept: int `[K]` indices of the selected boxes (e.g. from `nms` / `soft_nms`).
    kept_valid: optional bool `[K]`; invalid slots return their box unchanged.
    classes: optional int `[N]`; when given, only candidates of the kept box's class vote.
    sigma_t: the paper's sigma_t (0.02 in its experiments; smaller trusts the selected box more).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  variances = jnp.asarray(variances, jnp.float32)
  kept = jnp.asarray(kept, jnp.int32)
  num_kept = kept.shape[0]
  finite = jnp.all(jnp.isfinite(boxes), axis=-1) & jnp.all(jnp.isfinite(variances) & (variances > 0), axis=-1)
  safe_boxes = jnp.where(finite[:, None], boxes, 0.0)
  inv_var = jnp.where(finite[:, None], 1.0 / jnp.where(finite[:, None], variances, 1.0), 0.0)  # [N, 4]
  weighted_boxes = inv_var * safe_boxes
  kept_boxes = safe_boxes[kept]
  if classes is not None:
    classes = jnp.asarray(classes)

  def vote(block):
    """[B, 4] votes of the kept boxes `block`: only a [B, N] slice of the kept x candidates weights exists."""
    iou = pairwise_iou(safe_boxes[block], safe_boxes)
    near = (iou > 0) & finite[None, :]
    if classes is not None:
      near &= classes[block][:, None] == classes[None, :]
    p = jnp.where(near, jnp.exp(-jnp.square(1.0 - iou) / sigma_t), 0.0)
    hi = jax.lax.Precision.HIGHEST
    return jnp.dot(p, weighted_boxes, precision=hi), jnp.dot(p, inv_var, precision=hi)

  blocks = -(-num_kept // _BLOCK)
  padded = jnp.pad(kept, (0, blocks * _BLOCK - num_kept)).reshape(blocks, _BLOCK)
  numerator, total = (x.reshape(-1, 4)[:num_kept] for x in jax.lax.map(vote, padded))
  voted = jnp.where(total > 0, numerator / jnp.where(total > 0, total, 1.0), kept_boxes)
  if kept_valid is not None:
    voted = jnp.where(jnp.asarray(kept_valid)[:, None], voted, kept_boxes)
  return voted
