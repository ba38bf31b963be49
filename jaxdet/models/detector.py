"""The contract every jaxdet detector keeps: a Flax module plus three pure functions.

The trainer, evaluator and predictor only ever see a `Detector`; a new detector is a new file in
`jaxdet/models/detectors/` that builds one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class Detections:
  """Fixed-size detections for a batch of images.

  Attributes:
    boxes: `[B, K, 4]` float32 xyxy pixels in the network-input frame.
    scores: `[B, K]` float32 confidence in [0, 1].
    classes: `[B, K]` int32 contiguous class index in `[0, num_classes)`.
    valid: `[B, K]` bool, which of the K slots hold a real detection.
  """

  boxes: jax.Array
  scores: jax.Array
  classes: jax.Array
  valid: jax.Array


@dataclasses.dataclass(frozen=True)
class Detector:
  """A detector: `module` plus its target assignment, loss and post-processing.

  Attributes:
    module: Flax module; `module.apply(variables, images, train=...)` returns the raw outputs
      (a pytree of arrays) for images `[B, H, W, 3]`.
    assign: `assign(batch) -> targets`, a pure jittable function of the padded ground truth in
      `batch` (`boxes [B, M, 4]`, `labels [B, M]`, `valid [B, M]`, `crowd [B, M]`, `image [B, H, W, 3]`).
    loss: `loss(outputs, targets) -> (scalar, metrics)` where metrics is a dict of scalars.
    postprocess: `postprocess(outputs, image_shape=None) -> Detections` with a fixed number of slots per image;
      boxes are clipped to `image_shape` (h, w) when given.
    num_classes: number of foreground classes.
    merge_flipped: optional `merge_flipped(outputs, flipped_outputs) -> outputs` for flip testing: combines the
      outputs of the images and of their horizontal mirrors into outputs `postprocess` reads.
  """

  module: nn.Module
  assign: Callable[[Batch], Any]
  loss: Callable[[Any, Any], tuple[jax.Array, dict[str, jax.Array]]]
  postprocess: Callable[..., Detections]
  num_classes: int
  merge_flipped: Callable[[Any, Any], Any] | None = None
