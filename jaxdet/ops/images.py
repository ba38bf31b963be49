"""Input normalisation: the one place where uint8 pixels become network inputs."""

from __future__ import annotations

from typing import Sequence

import numpy as np

# ImageNet statistics in pixel units (0..255), RGB: the usual normalisation, also for networks trained from scratch.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize_image(images, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *,
                    dtype=np.float32):
  """Returns `(images - mean) / std` in `dtype`, for `[..., 3]` images (uint8 or float pixels 0..255).

  A NumPy input gives a NumPy array; a JAX array (or a tracer, inside jit) gives a JAX array. The loader yields
  uint8 batches (4x less to copy to the device than float32) and the detector normalises them on device, inside
  its module, so a checkpoint runs on raw pixels. `mean` and `std` are per channel in pixel units.
  """
  if isinstance(images, np.ndarray):
    xp = np
  else:
    import jax.numpy as xp  # pylint: disable=g-import-not-at-top
  images = xp.asarray(images).astype(xp.float32)
  mean = xp.asarray(mean, xp.float32)
  inv_std = 1.0 / xp.asarray(std, xp.float32)
  return ((images - mean) * inv_std).astype(dtype)
