"""Per-class NMS variants for the RoI heads of two-stage detectors, on a top-K candidate set: standard NMS,
IoU-guided NMS (IoU-Net) and Soft-NMS, then (optionally) variance voting (Softer-NMS, KL-Loss).

A RoI head scores every (RoI, class) pair and moves the RoI by that class's deltas. `top_candidates` keeps the K
highest pairs of an image that score above the threshold and are not empty after clipping (the pairs the standard
`select_detections` would pass to NMS, capped at K); `select_per_class` runs one of the NMS variants within each
class and returns the best `max_outputs` by their final score. Everything is per image (vmap for a batch) and
jittable with static shapes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdet.ops.boxes import clip_boxes
from jaxdet.ops.iou_guided_nms import iou_guided_nms
from jaxdet.ops.nms import batched_nms
from jaxdet.ops.soft_nms import soft_nms

METHODS = ("nms", "iou_guided", "soft")


class Candidates(NamedTuple):
  """One image's top-K (RoI, class) pairs: boxes `[K, 4]` (clipped), scores `[K]`, classes int32 `[K]`, `index`
  int32 `[K]` (the pair's flat index r * C + c into the head's `[R, C]` outputs) and valid bool `[K]`."""

  boxes: jax.Array
  scores: jax.Array
  classes: jax.Array
  index: jax.Array
  valid: jax.Array


def top_candidates(boxes: jax.Array, scores: jax.Array, *, top_k: int, score_threshold: float,
                   image_shape: tuple[int, int] | None) -> Candidates:
  """Returns the `top_k` highest-scoring (RoI, class) pairs of one image as `Candidates`.

  `boxes [R, C, 4]` per class, `scores [R, C]` (0 for invalid RoIs). A pair is valid when it scores strictly above
  `score_threshold` and its box, clipped to `image_shape` (h, w) when given, is not empty. Ties keep the lower
  flat index first (`lax.top_k`).
  """
  num_rois, num_classes = scores.shape
  values, index = jax.lax.top_k(scores.reshape(-1).astype(jnp.float32), min(top_k, num_rois * num_classes))
  classes = (index % num_classes).astype(jnp.int32)
  picked = boxes.astype(jnp.float32)[index // num_classes, classes]
  if image_shape is not None:
    picked = clip_boxes(picked, height=image_shape[0], width=image_shape[1])
  nonempty = (picked[:, 2] > picked[:, 0]) & (picked[:, 3] > picked[:, 1])
  valid = (values > score_threshold) & nonempty & jnp.all(jnp.isfinite(picked), axis=-1)
  return Candidates(boxes=jnp.where(valid[:, None], picked, 0.0), scores=jnp.where(valid, values, 0.0),
                    classes=classes, index=index.astype(jnp.int32), valid=valid)


def _merge(indices: jax.Array, scores: jax.Array, valid: jax.Array, max_outputs: int):
  """The best `max_outputs` of per-class selections `[C, M]` by score (ties: lower class, then selection order)."""
  flat_scores = jnp.where(valid, scores, -jnp.inf).reshape(-1)
  best, order = jax.lax.top_k(flat_scores, min(max_outputs, flat_scores.shape[0]))
  keep = jnp.isfinite(best)
  pad = max_outputs - order.shape[0]
  pick = lambda x: jnp.pad(jnp.where(keep, x.reshape(-1)[order], 0), (0, pad))  # noqa: E731
  return pick(indices).astype(jnp.int32), pick(scores).astype(jnp.float32), jnp.pad(keep, (0, pad))


def select_per_class(candidates: Candidates, *, num_classes: int, method: str = "nms", iou_threshold: float = 0.5,
                     max_outputs: int = 100, localization: jax.Array | None = None, soft_sigma: float = 0.5,
                     soft_score_threshold: float = 0.001) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns `(indices, scores, valid)`, `[max_outputs]` each: candidates kept by per-class `method`, best first.

  Methods (within each class; classes never suppress each other):
    "nms": greedy NMS at `iou_threshold` (`batched_nms`); the scores are the candidates'.
    "iou_guided": IoU-Net's Algorithm 1 (`iou_guided_nms`): select by `localization` `[K]` (predicted IoU), each
      kept box scored with the highest classification score of the boxes it suppressed (itself included).
    "soft": Soft-NMS (`soft_nms`, Gaussian, `soft_sigma`): scores decay by exp(-IoU^2 / sigma) instead of
      suppression; boxes whose decayed score falls under `soft_score_threshold` drop out.
  The kept boxes are ordered by final score (descending), so the first `max_outputs` are the best. The two
  re-scoring methods run once per class (vmap over classes with the other classes masked): exact, whatever the
  coordinates, at C times the memory of one pass.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  boxes, scores, classes, valid = candidates.boxes, candidates.scores, candidates.classes, candidates.valid
  if method == "nms":
    keep, kept = batched_nms(boxes, jnp.where(valid, scores, -jnp.inf), classes, iou_threshold=iou_threshold,
                             max_outputs=max_outputs)
    return keep, jnp.where(kept, scores[keep], 0.0), kept
  k = boxes.shape[0]

  def one_class(c):
    mine = valid & (classes == c)
    if method == "iou_guided":
      if localization is None:
        raise ValueError("IoU-guided NMS needs the candidates' predicted IoU (localization=...)")
      return iou_guided_nms(boxes, scores, jnp.where(mine, localization, -jnp.inf), iou_threshold=iou_threshold,
                            max_outputs=k)
    # Soft-NMS selects in descending (decayed) score order: a class's first `max_outputs` are all it can add.
    return soft_nms(boxes, jnp.where(mine, scores, -jnp.inf), method="gaussian", sigma=soft_sigma,
                    score_threshold=soft_score_threshold, max_outputs=min(k, max_outputs))

  indices, new_scores, kept = jax.vmap(one_class)(jnp.arange(num_classes))
  return _merge(indices, new_scores, kept, max_outputs)
