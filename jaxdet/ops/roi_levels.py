"""FPN level assignment for RoIs, and multi-level RoI Align that samples each RoI from its own level only.

Reference: Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017, Eq. (1): a RoI of size
w x h goes to level k = floor(k0 + log2(sqrt(w h) / 224)), clamped to the pyramid's levels. torchvision's
`LevelMapper` (used by `MultiScaleRoIAlign`) adds eps = 1e-6 inside the floor; the two differ only for RoIs
whose k0 + log2(sqrt(w h) / 224) lies within 1e-6 below an integer (about two float32 ulps), which torchvision
sends one level up.

Formulation of `multilevel_roi_align`: the levels' maps are flattened into one table `[sum_l B H_l W_l, C]` and
every RoI carries the offset, size and scale of its own level, so a single RoI Align pass (the gather formulation
of `roi_align`) samples each RoI from its level alone. The cost is that of one map's worth of sampling for all
RoIs plus one copy of the pyramid (about 1.33x the finest map) into the table; nothing depends on how RoIs
spread over levels. The alternatives pay more or guess: RoI Align on every level then a select pays L times;
per-level capacity with a mask must pick capacities (too small drops RoIs, safe ones cost L x R); sorting by level
still needs a static split. Gradients flow back to every level through the concatenation.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.ops.boxes import is_valid_box
from jaxdet.ops.roi_align import roi_align_rows, roi_align_table


def fpn_levels(boxes: jax.Array, *, k0: int = 4, canonical_size: float = 224, min_level: int = 2,
               max_level: int = 5) -> jax.Array:
  """Returns int32 `[R]`: the FPN level of each `[R, 4]` xyxy box, floor(k0 + log2(sqrt(w h) / canonical_size)).

  Clamped to [min_level, max_level]; degenerate boxes (non-finite, zero or negative size) get `min_level`.
  Equals torchvision's LevelMapper except within 1e-6 below a level boundary (see the module docstring).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  valid = is_valid_box(boxes)
  safe = jnp.where(valid[..., None], boxes, jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32))
  size = jnp.sqrt((safe[..., 2] - safe[..., 0]) * (safe[..., 3] - safe[..., 1]))
  level = jnp.floor(k0 + jnp.log2(size / jnp.float32(canonical_size)))
  level = jnp.clip(level, min_level, max_level).astype(jnp.int32)
  return jnp.where(valid, level, jnp.int32(min_level))


def _levels_of(strides: Sequence[int]) -> tuple[int, int]:
  """Returns `(min_level, max_level)` of consecutive power-of-two strides, or raises ValueError."""
  levels = [math.log2(s) for s in strides]
  if not levels or levels != list(range(int(levels[0]), int(levels[0]) + len(levels))):
    raise ValueError(f"strides must be consecutive powers of two, finest first (e.g. 4, 8, 16, 32); got {strides}")
  return int(levels[0]), int(levels[-1])


def multilevel_roi_align(features_by_level: Sequence[jax.Array], boxes: jax.Array, box_indices: jax.Array, *,
                         output_size: int | Sequence[int], strides: Sequence[int], sampling_ratio: int = 2,
                         aligned: bool = True, k0: int = 4, canonical_size: float = 224,
                         max_sampling_ratio: int | None = None, method: str = "taps") -> jax.Array:
  """Returns `[R, oh, ow, C]`: RoI Align of each box on its FPN level (`fpn_levels`), one pass over all levels.

  Args:
    features_by_level: `[B, H_l, W_l, C]` maps, finest first, with strides `strides` (consecutive powers of two;
      level l = log2(stride), so strides 4..32 are levels 2..5).
    boxes: `[R, 4]` xyxy boxes in image pixels. box_indices: int `[R]`, the image of each box.
    output_size, sampling_ratio, aligned, max_sampling_ratio: as in `roi_align` (torchvision's
      `MultiScaleRoIAlign` uses aligned=False).
    k0, canonical_size: the level formula's constants (FPN: 4 and 224).
    method: "taps" or "rows", as `roi_align`; "rows" pads every level's rows to the widest map (P2's) in one
      table of rows, so one pass still serves all levels.

  Equal to `roi_align(features_by_level[l], boxes[r], ..., spatial_scale=1 / strides[l])` for each box r with
  l = its level; invalid boxes and indices outside [0, B) give zeros. Differentiable w.r.t. every level's
  features (and the box coordinates, almost everywhere); jittable.
  """
  min_level, max_level = _levels_of(strides)
  if len(features_by_level) != len(strides):
    raise ValueError(f"{len(features_by_level)} feature maps for {len(strides)} strides")
  batch, channels = features_by_level[0].shape[0], features_by_level[0].shape[-1]
  shapes = [f.shape for f in features_by_level]
  if any(s[0] != batch or s[-1] != channels for s in shapes):
    raise ValueError(f"every level needs the same batch and channels, got shapes {shapes}")
  if method == "rows":
    return _multilevel_rows(features_by_level, boxes, box_indices, output_size=output_size, strides=strides,
                            sampling_ratio=sampling_ratio, aligned=aligned, k0=k0, canonical_size=canonical_size,
                            max_sampling_ratio=max_sampling_ratio)
  if method != "taps":
    raise ValueError(f"multilevel_roi_align method must be taps or rows, got {method!r}")
  table = jnp.concatenate([jnp.asarray(f).reshape(-1, channels) for f in features_by_level], axis=0)
  sizes = [s[0] * s[1] * s[2] for s in shapes]
  starts = jnp.asarray(np.concatenate([[0], np.cumsum(sizes)[:-1]]), jnp.int32)
  heights = jnp.asarray([s[1] for s in shapes], jnp.int32)
  widths = jnp.asarray([s[2] for s in shapes], jnp.int32)
  scales = jnp.asarray([1.0 / s for s in strides], jnp.float32)

  level = fpn_levels(boxes, k0=k0, canonical_size=canonical_size, min_level=min_level,
                     max_level=max_level) - min_level
  box_indices = jnp.asarray(box_indices, jnp.int32)
  in_range = (box_indices >= 0) & (box_indices < batch)
  image = jnp.clip(box_indices, 0, batch - 1)
  height, width = heights[level], widths[level]
  base = starts[level] + image * height * width
  return roi_align_table(table, boxes, base=base, height=height, width=width, scale=scales[level],
                         valid=in_range, output_size=output_size, sampling_ratio=sampling_ratio, aligned=aligned,
                         max_sampling_ratio=max_sampling_ratio)



def _multilevel_rows(features_by_level, boxes, box_indices, *, output_size, strides, sampling_ratio, aligned, k0,
                     canonical_size, max_sampling_ratio):
  """`multilevel_roi_align` by `roi_align_rows`: every level's rows, padded to the widest, in one table."""
  min_level, max_level = _levels_of(strides)
  batch = features_by_level[0].shape[0]
  max_width = max(f.shape[2] for f in features_by_level)
  rows = jnp.concatenate([jnp.pad(jnp.asarray(f), ((0, 0), (0, 0), (0, max_width - f.shape[2]), (0, 0))).reshape(
      -1, max_width, f.shape[-1]) for f in features_by_level], axis=0)
  row_counts = [f.shape[0] * f.shape[1] for f in features_by_level]
  starts = jnp.asarray(np.concatenate([[0], np.cumsum(row_counts)[:-1]]), jnp.int32)
  heights = jnp.asarray([f.shape[1] for f in features_by_level], jnp.int32)
  widths = jnp.asarray([f.shape[2] for f in features_by_level], jnp.int32)
  scales = jnp.asarray([1.0 / s for s in strides], jnp.float32)
  level = fpn_levels(boxes, k0=k0, canonical_size=canonical_size, min_level=min_level,
                     max_level=max_level) - min_level
  box_indices = jnp.asarray(box_indices, jnp.int32)
  in_range = (box_indices >= 0) & (box_indices < batch)
  image = jnp.clip(box_indices, 0, batch - 1)
  return roi_align_rows(rows, boxes, row_base=starts[level] + image * heights[level], height=heights[level],
                        width=widths[level], scale=scales[level], valid=in_range, output_size=output_size,
                        sampling_ratio=sampling_ratio, aligned=aligned, max_sampling_ratio=max_sampling_ratio)
