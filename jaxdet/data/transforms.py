"""The training and evaluation transforms the loader applies to each example, and the per-transform names.

Training, two pipelines chosen by the type of `augment`:
- `Augment` (CenterNet's recipe, Zhou et al. 2019): horizontal flip, random scale 0.6..1.3 and crop to the input
  size, colour jitter; with probability `mosaic_prob` the loader passes three more examples and YOLOv4's Mosaic
  tiles the four before the scale + crop.
- `SSDAugment` (SSD's, Liu et al. 2016): photometric distortion, zoom-out, min-IoU crop, flip, resize.
Evaluation: resize or letterbox to the input size, nothing random. Individual transforms live in `geometric`,
`photometric` and `mosaic`, and are re-exported here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxdet.data.geometric import (DEFAULT_FILL, MIN_SIZE, MIN_VISIBLE, SSD_FILL, SSD_MIN_IOUS, hflip, letterbox,
                                   min_iou_crop, random_flip, random_scale_crop, resize, zoom_out)
from jaxdet.data.mosaic import mosaic
from jaxdet.data.photometric import IMAGENET_MEAN, IMAGENET_STD, color_jitter, normalize_image, photometric_distort
from jaxdet.data.source import Example

__all__ = ["Augment", "SSDAugment", "train_transform", "ssd_train_transform", "eval_transform", "resize",
           "letterbox", "hflip", "random_flip", "random_scale_crop", "zoom_out", "min_iou_crop", "color_jitter",
           "photometric_distort", "mosaic", "normalize_image", "IMAGENET_MEAN", "IMAGENET_STD"]


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


@dataclasses.dataclass(frozen=True)
class SSDAugment:
  """Options of SSD's training augmentation (`ssd_train_transform`); the defaults are the paper's.

  `photometric_prob`, `zoom_out_prob` and `flip_prob` of 0 and `crop=False` switch those parts off (e.g. the
  ablation of zoom-out and crop). `min_size` is the final resize's box rule (`jaxdet.data.geometric`): boxes that a
  4x zoom-out and the resize shrink below `min_size` pixels are dropped.
  """
  photometric_prob: float = 0.5
  brightness_delta: float = 32.0
  contrast_range: tuple[float, float] = (0.5, 1.5)
  saturation_range: tuple[float, float] = (0.5, 1.5)
  hue_delta: float = 18.0
  zoom_out_prob: float = 0.5
  max_zoom: float = 4.0
  fill: tuple[int, int, int] = SSD_FILL
  crop: bool = True
  min_ious: tuple[float, ...] = SSD_MIN_IOUS
  max_trials: int = 50
  min_crop_scale: float = 0.3
  flip_prob: float = 0.5
  min_size: float = MIN_SIZE


def ssd_train_transform(example: Example, size: int | Sequence[int], *, rng: np.random.Generator,
                        augment: SSDAugment = SSDAugment()) -> Example:
  """Returns SSD's training view of `example` at `size` (Liu et al. 2016, sec. 2.2 and 3.6).

  In the reference's order (ssd.pytorch's `SSDAugmentation`): photometric distortion, zoom-out onto a mean-filled
  canvas, min-IoU random crop, horizontal flip, and a plain resize to `size` (SSD warps to its square input; the
  aspect ratio is not kept). Every step draws from `rng`, so the view is a function of the example and the
  generator's seed.
  """
  a = augment
  example = photometric_distort(example, rng=rng, prob=a.photometric_prob, brightness_delta=a.brightness_delta,
                                contrast_range=a.contrast_range, saturation_range=a.saturation_range,
                                hue_delta=a.hue_delta)
  example = zoom_out(example, rng=rng, prob=a.zoom_out_prob, max_ratio=a.max_zoom, fill=a.fill)
  if a.crop:
    example = min_iou_crop(example, rng=rng, min_ious=a.min_ious, max_trials=a.max_trials,
                           min_scale=a.min_crop_scale)
  example = random_flip(example, rng=rng, prob=a.flip_prob)
  return resize(example, size, min_size=a.min_size, min_visible=0.0)


def train_transform(example: Example, size: int | Sequence[int], *, rng: np.random.Generator,
                    augment: Augment | SSDAugment = Augment(),
                    mosaic_with: Sequence[Example] | None = None) -> Example:
  """Returns the training view of `example` at `size`: flip, random scale + crop (or letterbox), colour jitter;
  or, when `augment` is an `SSDAugment`, SSD's pipeline (`ssd_train_transform`).

  With `mosaic_with` (three more examples), each of the four is flipped on its own and Mosaic tiles them, with
  the random scale + crop composed into the same resampling (`mosaic(..., scale_range=...)`). The flip comes
  first (CenterNet flips after the crop; the distribution is the same) because flipping the stored image is
  cheaper than flipping the larger network input.
  """
  if isinstance(augment, SSDAugment):
    if mosaic_with is not None:
      raise ValueError("Mosaic is not part of SSD's augmentation: set mosaic_prob to 0 with the ssd pipeline")
    return ssd_train_transform(example, size, rng=rng, augment=augment)
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
