"""Region proposals from an RPN's dense outputs: decode, clip, drop small boxes, per-level top-N, NMS, top-K.

Faster R-CNN (Ren et al. 2015, sec. 3.3): proposals are the anchors moved by the predicted deltas and clipped to
the image; the top-N by objectness go through NMS at IoU 0.7 and the best K are kept (12,000 -> 2,000 in training,
6,000 -> 300 at test on a single C4 map). With FPN (Lin et al. 2017, and torchvision / detectron2) the top-N is
taken per level and NMS runs within each level, then the best K over all levels are kept. Everything has a
fixed size (`post_nms_top_n` slots with a `valid` mask), so this runs under `jit` and `vmap` over images.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.ops.boxes import clip_boxes
from jaxdet.ops.coders import decode_boxes
from jaxdet.ops.nms import batched_nms


def generate_proposals(anchors: jax.Array, objectness: jax.Array, deltas: jax.Array, *,
                       image_shape: tuple[int, int], level_sizes: Sequence[int] | None = None,
                       pre_nms_top_n: int = 6000, post_nms_top_n: int = 300, nms_threshold: float = 0.7,
                       min_size: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns `(boxes [K, 4], scores [K], valid [K])` of one image, K = `post_nms_top_n`, best first.

  Args:
    anchors: `[N, 4]` xyxy pixels, levels concatenated in the order of `level_sizes`.
    objectness: `[N]` scores (logits or probabilities: only their order matters; returned as given).
    deltas: `[N, 4]` (dx, dy, dw, dh) with weights (1, 1, 1, 1) (`decode_boxes`).
    image_shape: (h, w) to clip to.
    level_sizes: anchors per pyramid level (sum N); None is one level (the single-map Faster R-CNN).
    pre_nms_top_n: anchors kept per level before NMS, by objectness.
    post_nms_top_n: proposals kept per image after NMS, K.
    nms_threshold: NMS IoU threshold, applied within each level.
    min_size: boxes narrower or lower than this (after clipping) are dropped (torchvision: 1e-3; the paper's
      reference code: 16 px at the network's scale).

  Boxes that are empty or below `min_size`, and non-finite scores, are never proposed; invalid slots hold zeros.
  Proposals are inputs to the second stage, not functions of the RPN's parameters: callers stop their gradient
  (the paper's approximate joint training).
  """
  n = objectness.shape[0]
  level_sizes = (n,) if level_sizes is None else tuple(int(s) for s in level_sizes)
  if sum(level_sizes) != n:
    raise ValueError(f"level_sizes {level_sizes} sum to {sum(level_sizes)}, but there are {n} anchors")
  objectness = jnp.asarray(objectness, jnp.float32)
  anchors, deltas = jnp.asarray(anchors, jnp.float32), jnp.asarray(deltas)
  picked, level_of = [], []
  start = 0
  for level, size in enumerate(level_sizes):
    k = min(pre_nms_top_n, size)
    _, index = jax.lax.top_k(objectness[start:start + size], k)
    picked.append(start + index)
    level_of.append(np.full((k,), level, np.int32))
    start += size
  picked = jnp.concatenate(picked)
  level_of = jnp.asarray(np.concatenate(level_of))
  boxes = clip_boxes(decode_boxes(deltas[picked], anchors[picked]), height=image_shape[0], width=image_shape[1])
  scores = objectness[picked]
  big_enough = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
  nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  scores = jnp.where(big_enough & nonempty, scores, -jnp.inf)  # not selectable by NMS
  keep, valid = batched_nms(boxes, scores, level_of, iou_threshold=nms_threshold, max_outputs=post_nms_top_n)
  return (jnp.where(valid[:, None], boxes[keep], 0.0), jnp.where(valid, scores[keep], 0.0), valid)
