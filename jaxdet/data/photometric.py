"""Photometric transforms: CenterNet's colour jitter on one example.

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
