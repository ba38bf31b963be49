"""Softer-NMS variance voting (He et al. 2019, "Bounding Box Regression with Uncertainty")."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.ops.iou import pairwise_iou


def variance_voting(boxes: jax.Array, variances: jax.Array, kept: jax.Array, *, kept_valid: jax.Array | None = None,
                    classes: jax.Array | None = None, sigma_t: float = 0.02) -> jax.Array:
  """Returns `[K, 4]` voted boxes: each kept box replaced by the variance-weighted mean of its neighbours.

  For a kept box b and every candidate b_i with IoU(b, b_i) > 0 (b itself included, weight 1):
    p_i = exp(-(1 - IoU(b, b_i))^2 / sigma_t),   b.x = sum_i (p_i / var_i.x) b_i.x / sum_i (p_i / var_i.x)
  per coordinate x (the paper's Algorithm 1, the "var voting" step applied after NMS or Soft-NMS selection).
  Low-variance (confident) coordinates and close neighbours dominate.

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
  finite = jnp.all(jnp.isfinite(boxes), axis=-1) & jnp.all(jnp.isfinite(variances) & (variances > 0), axis=-1)
  safe_boxes = jnp.where(finite[:, None], boxes, 0.0)
  inv_var = jnp.where(finite[:, None], 1.0 / jnp.where(finite[:, None], variances, 1.0), 0.0)
  kept_boxes = safe_boxes[kept]
  iou = pairwise_iou(kept_boxes, safe_boxes)  # [K, N]
  near = (iou > 0) & finite[None, :]
  if classes is not None:
    classes = jnp.asarray(classes)
    near &= classes[kept][:, None] == classes[None, :]
  p = jnp.where(near, jnp.exp(-jnp.square(1.0 - iou) / sigma_t), 0.0)
  weights = p[..., None] * inv_var[None]  # [K, N, 4]
  total = weights.sum(axis=1)
  voted = jnp.einsum("knc,nc->kc", weights, safe_boxes) / jnp.where(total > 0, total, 1.0)
  voted = jnp.where(total > 0, voted, kept_boxes)
  if kept_valid is not None:
    voted = jnp.where(jnp.asarray(kept_valid)[:, None], voted, kept_boxes)
  return voted
