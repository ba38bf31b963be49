"""The training and evaluation transforms the loader applies to each example, and the per-transform names.

Training (CenterNet's recipe, Zhou et al. 2019): horizontal flip, random scale 0.6..1.3 and crop to the input
size, colour jitter; with probability `mosaic_prob` the loader passes three more examples and YOLOv4's Mosaic
tiles the four before the scale + crop. Evaluation: resize
or letterbox to the input size, nothing random. Individual transforms live in `geometric`, `photometric` and
`mosaic`, and are re-exported here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxdet.data.geometric import (DEFAULT_FILL, MIN_SIZE, MIN_VISIBLE, hflip, letterbox, random_flip,
                                   random_scale_crop, resize)
from jaxdet.data.mosaic import mosaic
from jaxdet.data.photometric import IMAGENET_MEAN, IMAGENET_STD, color_jitter, normalize_image
from jaxdet.data.source import Example

__all__ = ["Augment", "train_transform", "eval_transform", "resize", "letterbox", "hflip", "random_flip",
           "random_scale_crop", "color_jitter", "mosaic", "normalize_image", "IMAGENET_MEAN", "IMAGENET_STD"]


@dataclasses.dataclass(frozen=True)
class Augment:
  """Strengths of the training augmentations; the defaults are CenterNet's.

  `scale_range=None` replaces the random scale + crop by a letterbox to the input size. Colour strengths of 0
  switch that part off. `min_size` / `min_visible` are the box-keeping rule of `jaxdet.data.geometric`.
  """
  flip_prob: float = 0.5
  scale_range: tuple[float, float] | None = (0.6, 1.3)
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.0
  lighting: float = 0.1
  mosaic_center: tuple[float, float] = (0.25, 0.75)
  fill: int = DEFAULT_FILL
  min_size: float = MIN_SIZE
  min_visible: float = MIN_VISIBLE


def train_transform(example: Example, size: int | Sequence[int], *, rng: np.random.Generator,
                    augment: Augment = Augment(), mosaic_with: Sequence[Example] | None = None) -> Example:
  """Returns the training view of `example` at `size`: flip, random scale + crop (or letterbox), colour jitter.

  With `mosaic_with` (three more examples), each of the four is flipped on its own and Mosaic tiles them, with
  the random scale + crop composed into the same resampling (`mosaic(..., scale_range=...)`). The flip comes
  first (CenterNet flips after the crop; the distribution is the same) because flipping the stored image is
  cheaper than flipping the larger network input.
  """
  a = augment
  if mosaic_with is not None and "proposals" in example:
    raise ValueError("Mosaic does not carry per-image proposals; set mosaic_prob=0 for detectors on proposals")
  if mosaic_with is not None:
    tiles = [random_flip(ex, rng=rng, prob=a.flip_prob) for ex in (example, *mosaic_with)]
    example = mosaic(tiles, size, rng=rng, center_range=a.mosaic_center, scale_range=a.scale_range, fill=a.fill,
                     min_size=a.min_size, min_visible=a.min_visible)
  else:
    example = random_flip(example, rng=rng, prob=a.flip_prob)
    if a.scale_range is None:
      example = letterbox(example, size, fill=a.fill, min_size=a.min_size, min_visible=a.min_visible)
    else:
      example = random_scale_crop(example, size, rng=rng, scale_range=a.scale_range, fill=a.fill,
                                  min_size=a.min_size, min_visible=a.min_visible)
  return color_jitter(example, rng=rng, brightness=a.brightness, contrast=a.contrast, saturation=a.saturation,
                      hue=a.hue, lighting=a.lighting)


def eval_transform(example: Example, size: int | Sequence[int], *, mode: str = "letterbox",
                   fill: int = DEFAULT_FILL) -> Example:
  """Returns the example letterboxed (`mode="letterbox"`) or plainly resized (`"resize"`) to `size`.

  No box is dropped for being small: evaluation scores against the stored annotations, and the boxes here only
  need to map back through `frame`.
  """
  if mode == "letterbox":
    return letterbox(example, size, fill=fill, min_size=0.0, min_visible=0.0)
  if mode == "resize":
    return resize(example, size, min_size=0.0, min_visible=0.0)
  raise ValueError(f"unknown eval resize mode {mode!r}: use 'letterbox' or 'resize'")
