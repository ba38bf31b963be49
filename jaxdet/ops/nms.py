"""Greedy non-maximum suppression with fixed-size outputs: exact for every threshold, in O(N) memory.

The algorithm is torchvision's greedy NMS — visit boxes in descending score order, keep a box unless a kept box
overlaps it with IoU strictly above the threshold — computed in tiles so that it vectorises:

1. Sort by score (stable: equal scores keep input order) and cut the sorted boxes into tiles of `tile_size`.
2. For each tile, in order: (a) drop the boxes that a box already kept overlaps, comparing against the kept list
   in chunks of `tile_size` (only kept boxes are compared, never all earlier boxes); (b) resolve suppression
   inside the tile exactly by iterating `keep = alive & ~any_{j < i}(keep_j & iou_ij > t)` to its fixed point —
   each pass fixes at least one more box of the sequential answer, so it is exact for any threshold (unlike
   tiled ports that apply a single pass and are only right at t >= 0.5); (c) append the tile's survivors.
3. Stop as soon as `max_outputs` boxes are kept.

Peak memory is O(N + tile_size^2); the IoU work is (#kept x N) / 2 in the worst case, as for the C++ loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.ops.iou import pairwise_iou

DEFAULT_TILE = 256


def _self_suppress(overlaps: jax.Array, alive: jax.Array) -> jax.Array:
  """bool `[B]`: the greedy survivors of one score-sorted tile, given which boxes are still `alive`.

  `overlaps[i, j]`: box j would suppress box i if kept (IoU above the threshold, same class where it applies).
  """
  size = alive.shape[0]
  overlaps = overlaps & (jnp.arange(size)[:, None] > jnp.arange(size)[None, :])  # only earlier boxes suppress

  def step(state):
    keep, _ = state
    new = alive & ~jnp.any(overlaps & keep[None, :], axis=1)
    return new, jnp.any(new != keep)

  keep, _ = jax.lax.while_loop(lambda s: s[1], step, (alive, jnp.array(True)))
  return keep


def _nms_core(boxes: jax.Array, scores: jax.Array, classes: jax.Array | None, *, iou_threshold: float,
              max_outputs: int, score_threshold: float | None, tile_size: int) -> tuple[jax.Array, jax.Array]:
  """Tiled greedy NMS; with `classes`, boxes of different classes never suppress each other."""
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  n = boxes.shape[0]
  if n == 0:
    return jnp.zeros((max_outputs,), jnp.int32), jnp.zeros((max_outputs,), bool)
  selectable = jnp.isfinite(scores) & jnp.all(jnp.isfinite(boxes), axis=-1)
  if score_threshold is not None:
    selectable &= scores > score_threshold
  safe_boxes = jnp.where(selectable[:, None], boxes, 0.0)
  order = jnp.argsort(jnp.where(selectable, -scores, jnp.inf), stable=True).astype(jnp.int32)
  num_selectable = jnp.sum(selectable)

  tile = max(1, min(tile_size, n))
  num_tiles = -(-n // tile) if n else 0
  padded = num_tiles * tile
  pad = padded - n
  order = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)])
  sorted_boxes = safe_boxes[order]
  in_range = jnp.arange(padded) < num_selectable
  cls = None if classes is None else jnp.asarray(classes, jnp.int32)[order]

  capacity = max_outputs + tile  # room for one whole tile past the limit, so appends never go out of bounds
  kept_boxes = jnp.zeros((capacity, 4), jnp.float32)
  kept_index = jnp.zeros((capacity,), jnp.int32)
  kept_cls = jnp.zeros((capacity,), jnp.int32)

  def iou_mask(a_boxes, a_cls, b_boxes, b_cls):
    over = pairwise_iou(a_boxes, b_boxes) > iou_threshold
    if cls is not None:
      over &= a_cls[:, None] == b_cls[None, :]
    return over

  def tile_body(state):
    t, num_kept, kept_boxes, kept_index, kept_cls = state
    start = t * tile
    tb = jax.lax.dynamic_slice_in_dim(sorted_boxes, start, tile)
    tc = None if cls is None else jax.lax.dynamic_slice_in_dim(cls, start, tile)
    alive = jax.lax.dynamic_slice_in_dim(in_range, start, tile)

    def chunk_body(c_state):
      c, alive = c_state
      kb = jax.lax.dynamic_slice_in_dim(kept_boxes, c * tile, tile)
      kc = None if cls is None else jax.lax.dynamic_slice_in_dim(kept_cls, c * tile, tile)
      real = c * tile + jnp.arange(tile) < num_kept
      hit = jnp.any(iou_mask(tb, tc, kb, kc) & real[None, :], axis=1)
      return c + 1, alive & ~hit

    _, alive = jax.lax.while_loop(lambda s: (s[0] * tile < num_kept) & jnp.any(s[1]), chunk_body,
                                  (jnp.int32(0), alive))
    keep = _self_suppress(iou_mask(tb, tc, tb, tc), alive)
    # Compact the survivors to the front of the tile (stable), then write the whole tile at num_kept.
    pos = jnp.argsort(~keep, stable=True)
    kept_boxes = jax.lax.dynamic_update_slice_in_dim(kept_boxes, tb[pos], num_kept, 0)
    kept_index = jax.lax.dynamic_update_slice_in_dim(kept_index, order[start + pos], num_kept, 0)
    if cls is not None:
      kept_cls = jax.lax.dynamic_update_slice_in_dim(kept_cls, tc[pos], num_kept, 0)
    num_kept = jnp.minimum(num_kept + jnp.sum(keep), max_outputs)
    return t + 1, num_kept, kept_boxes, kept_index, kept_cls

  def tile_cond(state):
    t, num_kept = state[0], state[1]
    return (t < num_tiles) & (num_kept < max_outputs) & (t * tile < num_selectable)

  state = (jnp.int32(0), jnp.int32(0), kept_boxes, kept_index, kept_cls)
  _, num_kept, _, kept_index, _ = jax.lax.while_loop(tile_cond, tile_body, state)
  valid = jnp.arange(max_outputs) < num_kept
  return jnp.where(valid, kept_index[:max_outputs], 0), valid


def nms(boxes: jax.Array, scores: jax.Array, *, iou_threshold: float, max_outputs: int,
        score_threshold: float | None = None, tile_size: int = DEFAULT_TILE) -> tuple[jax.Array, jax.Array]:
  """Returns `(indices, valid)`: int32 `[max_outputs]` kept indices in descending score order, and their mask.

  Greedy NMS equal to torchvision's `nms` (same indices, same order): a box is suppressed when its IoU with a
  kept, higher-ranked box is strictly greater than `iou_threshold`; equal scores rank by input index. Boxes or
  scores that are not finite, and scores <= `score_threshold` when given, are never kept. Boxes of zero or
  negative size have IoU 0 with everything, so they are kept by score and suppress nothing (as in torchvision for
  empty boxes). Invalid output slots hold index 0. Jittable and vmappable; memory O(N + tile_size^2).

  Args:
    boxes: `[N, 4]` xyxy. scores: `[N]`.
    iou_threshold: in [0, 1].
    max_outputs: static output length; NMS stops once that many boxes are kept.
    score_threshold: optional; boxes must score strictly above it.
    tile_size: boxes per tile (static); a speed knob, results do not depend on it.
  """
  return _nms_core(boxes, scores, None, iou_threshold=iou_threshold, max_outputs=max_outputs,
                   score_threshold=score_threshold, tile_size=tile_size)


def batched_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array, *, iou_threshold: float,
                max_outputs: int, score_threshold: float | None = None,
                tile_size: int = DEFAULT_TILE) -> tuple[jax.Array, jax.Array]:
  """Returns `(indices, valid)` of class-aware NMS: boxes suppress only boxes of their own class.

  Equal to torchvision's `batched_nms` (indices in descending score order). Strategy: one NMS pass over all
  boxes in which the suppression test also requires equal classes, rather than torchvision's coordinate offset
  (`boxes + class * (max_coordinate + 1)`): the offset pushes coordinates to `num_classes x image size`, where
  float32 spacing grows to whole pixels and changes IoUs (e.g. 1,000 classes x 4,000 px puts boxes near 4e6,
  spacing 0.25-0.5 px), and a per-class loop would cost one pass per class. The mask costs one integer compare
  per IoU entry and is exact at any coordinate.

  Args:
    boxes: `[N, 4]` xyxy. scores: `[N]`. classes: int `[N]`.
    Other arguments as `nms`.
  """
  return _nms_core(boxes, scores, classes, iou_threshold=iou_threshold, max_outputs=max_outputs,
                   score_threshold=score_threshold, tile_size=tile_size)
