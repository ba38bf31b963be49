"""Photometric transforms of one example: CenterNet's colour jitter and SSD's photometric distortion.

The loader yields uint8 images; the detector normalises them on device (`jaxdet.ops.images.normalize_image`,
re-exported here), so the host never touches float images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from jaxdet.data.source import Example
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image  # noqa: F401  (re-exported)

# ImageNet RGB covariance eigen-decomposition (AlexNet's "lighting" noise, values as in fb.resnet.torch), for
# pixels in 0..1; scaled by 255 where used.
_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                    [-0.5808, -0.0045, -0.8140],
                    [-0.5836, -0.6948, 0.4203]])
_GRAY = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as cv2's and PIL's RGB -> L


def adjust_hue(image: np.ndarray, delta: float) -> np.ndarray:
  """Returns uint8 `[H, W, 3]`: `image` with its hue rotated by `delta` turns (through PIL's 8-bit HSV)."""
  hsv = np.asarray(Image.fromarray(image).convert("HSV")).copy()
  hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(delta * 256))) % 256
  return np.array(Image.fromarray(hsv, "HSV").convert("RGB"))


def _mean_color(image: np.ndarray) -> np.ndarray:
  """float64 `[3]`: the mean RGB of a uint8 image (from PIL's histogram: ~10x faster than NumPy's mean here)."""
  hist = np.asarray(Image.fromarray(image).histogram(), np.float64).reshape(3, 256)
  return hist @ np.arange(256) / (image.shape[0] * image.shape[1])


def adjust_color(image: np.ndarray, *, brightness: float = 1.0, contrast: float = 1.0, saturation: float = 1.0,
                 order: Sequence[str] = ("brightness", "contrast", "saturation"),
                 lighting: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
  """Returns uint8 `[H, W, 3]`: `image` with the three blends applied in `order`, then PCA lighting noise.

  CenterNet's `color_aug` (after CornerNet): brightness `x * a`; contrast `x * a + mean(gray(x)) * (1 - a)`;
  saturation `x * a + gray(x) * (1 - a)`; lighting adds `eigvec @ (eigval * alpha)`; clipped to 0..255 and
  rounded once, at the end. Every step is affine in the RGB vector (contrast's offset needs only the mean colour),
  so the chain is composed into one 3x4 matrix and applied in a single pass by PIL. Unlike CenterNet, which
  computes the grey image once before the chain, each blend uses the grey of its own input (as torchvision).
  """
  m, b = np.eye(3), np.zeros(3)
  factors = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
  for name in order:
    a = float(factors[name])
    if a == 1:
      continue
    if name == "brightness":
      m, b = a * m, a * b
    elif name == "contrast":
      m, b = a * m, a * b + (1 - a) * (_GRAY @ (m @ _mean_color(image) + b))
    else:
      blend = a * np.eye(3) + (1 - a) * np.outer(np.ones(3), _GRAY)
      m, b = blend @ m, blend @ b
  b = b + 255.0 * (_EIGVEC @ (_EIGVAL * np.asarray(lighting, np.float64)))
  if np.array_equal(m, np.eye(3)) and not b.any():
    return image
  matrix = tuple(np.concatenate([m, b[:, None]], axis=1).ravel().tolist())
  return np.array(Image.fromarray(image).convert("RGB", matrix=matrix))  # PIL rounds and clips; np.array: writable


def color_jitter(example: Example, *, rng: np.random.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.0, lighting: float = 0.1) -> Example:
  """Returns the example with randomly jittered colours (boxes untouched): CenterNet's colour augmentation.

  Factors `1 + U(-v, v)` for brightness, contrast and saturation, applied in a random order; then lighting noise
  with `alpha ~ N(0, lighting)` per eigenvector. Optionally, first, a hue rotation by `U(-hue, hue)` turns
  (`hue <= 0.5`; CenterNet uses none). A strength of 0 skips that part without drawing from `rng`.
  """
  image = example["image"]
  if hue > 0:
    image = adjust_hue(image, rng.uniform(-hue, hue))
  factor = lambda v: 1.0 + rng.uniform(-v, v) if v > 0 else 1.0  # noqa: E731
  b, c, s = factor(brightness), factor(contrast), factor(saturation)
  order = tuple(rng.permutation(["brightness", "contrast", "saturation"]).tolist())
  alpha = rng.normal(0.0, lighting, 3) if lighting > 0 else (0.0, 0.0, 0.0)
  return {**example, "image": adjust_color(image, brightness=b, contrast=c, saturation=s, order=order,
                                           lighting=alpha)}


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """Returns float32 `[..., 3]` (hue in degrees [0, 360), saturation [0, 1], value [0, 255]) of RGB `[..., 3]`
  pixels in 0..255 (the hexcone model, as `colorsys.rgb_to_hsv` and OpenCV's float conversion)."""
  rgb = np.asarray(rgb, np.float32)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = rgb.max(axis=-1)
  c = v - rgb.min(axis=-1)
  safe_c = np.where(c > 0, c, 1.0)
  h = np.where(v == r, (g - b) / safe_c, np.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
  h = np.where(c > 0, (h * 60.0) % 360.0, 0.0)
  s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
  return np.stack([h, s, v], axis=-1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
  """Returns float32 `[..., 3]` RGB in 0..255 from `rgb_to_hsv`'s (hue degrees, saturation, value)."""
  hsv = np.asarray(hsv, np.float32)
  h, s, v = hsv[..., 0] % 360.0, hsv[..., 1], hsv[..., 2]
  k = (np.array([5.0, 3.0, 1.0], np.float32) + h[..., None] / 60.0) % 6.0
  return (v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def photometric_distort(example: Example, *, rng: np.random.Generator, prob: float = 0.5,
                        brightness_delta: float = 32.0, contrast_range: tuple[float, float] = (0.5, 1.5),
                        saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18.0) -> Example:
  """Returns the example with SSD's random photometric distortion (boxes untouched).

  The paper's Caffe `DistortImage` (and ssd.pytorch's `PhotometricDistort`): each step is applied with
  probability `prob`, in one of two orders chosen with equal chance:
    brightness, contrast, saturation, hue   or   brightness, saturation, hue, contrast.
  Brightness adds `U(-brightness_delta, brightness_delta)` to every channel; contrast multiplies the pixel values
  by `U(*contrast_range)` (Caffe's `convertTo(alpha, 0)`: no blend with the mean, unlike torchvision's contrast);
  saturation multiplies HSV saturation by `U(*saturation_range)`; hue adds `U(-hue_delta, hue_delta)` degrees.
  Values are clipped to 0..255 (saturation to 0..1) after each step, as Caffe's 8-bit images are, and rounded once
  at the end. The channel-order shuffle is off, as in the paper's model (`random_order_prob: 0`). Every call
  draws the same number of values from `rng`, applied or not.
  """
  apply = rng.uniform(size=4) < prob  # brightness, contrast, saturation, hue
  contrast_first = rng.uniform() < 0.5
  delta = rng.uniform(-brightness_delta, brightness_delta)
  alpha = rng.uniform(*contrast_range)
  saturation = rng.uniform(*saturation_range)
  hue = rng.uniform(-hue_delta, hue_delta)
  if not apply.any():
    return example
  x = example["image"].astype(np.float32)
  if apply[0]:
    x = np.clip(x + delta, 0.0, 255.0)
  if apply[1] and contrast_first:
    x = np.clip(x * alpha, 0.0, 255.0)
  if apply[2] or apply[3]:
    hsv = rgb_to_hsv(x)
    if apply[2]:
      hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
    if apply[3]:
      hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
    x = np.clip(hsv_to_rgb(hsv), 0.0, 255.0)
  if apply[1] and not contrast_first:
    x = np.clip(x * alpha, 0.0, 255.0)
  return {**example, "image": np.rint(x).astype(np.uint8)}
