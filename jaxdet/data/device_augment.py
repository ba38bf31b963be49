"""CenterNet's training augmentation (`transforms.Augment`) as jitted JAX on device: flip, letterbox or random scale +
crop, colour jitter — per example, with per-example keys, vmapped over the batch.

The host pipeline (`transforms.train_transform`) costs milliseconds of CPU per image (resampling, colour matrix,
collate); a GPU that steps 25,000 images/s would need dozens of cores to keep up. Here the host only gathers
fixed-size uint8 images (`jaxdet.data.cache`) and the device augments them inside the train step. The same
mathematics as the host transforms, so a parameter set gives the same result both ways (tests):
- flip: `geometric.hflip` (columns reversed, `x -> W - x`, `frame` composed);
- warp: `geometric.warp_example`'s axis-aligned map `x' = x * s + t` onto an `(H, W)` canvas of `fill`, with PIL's
  bilinear resampling transcribed: separable triangle filter, support `max(1, 1/s)` source pixels (antialiased
  when shrinking), normalised taps clamped to the image, the horizontal pass rounded to uint8 before the vertical
  one, output pixels written only where they lie wholly inside the mapped image (PIL works in 22-bit fixed
  point, this in float32 at full matmul precision: a pixel may differ by one level where a value sits on .5);
- the box rule of `jaxdet.data.geometric` (clip to the source, map, clip to the window, keep boxes at least
  `min_size` wide and high with `min_visible` of their area inside);
- colour: `photometric.adjust_color`'s single 3x4 colour matrix (brightness, contrast, saturation in a random
  order, then PCA lighting), rounded half up and clipped like PIL's matrix convert.
Dropped boxes become padding (zeros, `valid=False`); the kept ones move to the front in their order, as the host
collate lays them out.

Random draws are per example from `fold_in(fold_in(PRNGKey(seed), AUGMENT_STREAM), position)`, `position` being
the example's global stream position (`batch["position"]`, from the cached loader), so a resumed run, or any
number of hosts and devices, augments every example exactly as an unbroken one-device run. The draws follow the
host's distributions (flip with `flip_prob`, scale `U(scale_range)`, corner uniform over the valid positions,
factors `1 + U(-v, v)`, a random order, lighting `N(0, lighting)`), not the host's NumPy streams: host and
device runs see different augmentations of the same images. Not on device: hue rotation (PIL's 8-bit HSV),
Mosaic, multi-scale sizes, SSD's pipeline and per-image proposals — the caller refuses them with a clear error.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.data.geometric import as_size
from jaxdet.data.photometric import _EIGVAL, _EIGVEC, _GRAY
from jaxdet.data.transforms import Augment

AUGMENT_STREAM = 0x61756700  # folded into the seed first: augmentation keys never collide with the model's
BOX_FIELDS = ("boxes", "labels", "crowd", "difficult", "valid")  # per-box fields, moved together
_HIGHEST = jax.lax.Precision.HIGHEST  # TF32 on recent GPUs would move pixels by more than a level
_EPS = 1e-6  # as geometric.paste_affine: float noise must not lose a row of pixels


def resample_weights(out_size: int, in_size: int, scale, offset) -> tuple[jax.Array, jax.Array]:
  """Returns `(weights [out_size, in_size] float32, inside [out_size] bool)` of PIL's bilinear resampling along
  one axis under `x' = x * scale + offset` (scale > 0).

  Output pixel j samples around the source point `c = (j + 0.5 - offset) / scale` with the triangle filter of
  support `f = max(1, 1 / scale)`: taps `x` in `[floor(c - f + 0.5), floor(c + f + 0.5))` clamped to the image,
  weight `1 - |x + 0.5 - c| / f`, normalised to sum 1 (Pillow's `precompute_coeffs`). `inside` marks the output
  pixels wholly inside the mapped image, the only ones `paste_affine` writes.
  """
  j = jnp.arange(out_size, dtype=jnp.float32)
  x = jnp.arange(in_size, dtype=jnp.float32)
  filterscale = jnp.maximum(1.0 / scale, 1.0)
  center = (j + 0.5 - offset) / scale
  lo = jnp.maximum(jnp.floor(center - filterscale + 0.5), 0.0)
  hi = jnp.minimum(jnp.floor(center + filterscale + 0.5), in_size)
  taps = (x[None] >= lo[:, None]) & (x[None] < hi[:, None])
  w = jnp.where(taps, jnp.maximum(1.0 - jnp.abs((x[None] + 0.5 - center[:, None]) / filterscale), 0.0), 0.0)
  total = w.sum(axis=1, keepdims=True)
  w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
  inside = (j >= jnp.ceil(offset - _EPS)) & (j + 1 <= jnp.floor(in_size * scale + offset + _EPS))
  return w, inside


def _round8(x: jax.Array) -> jax.Array:
  """float pixels -> float32 values of uint8 (round half up, clip 0..255), as PIL's 8-bit output."""
  return jnp.clip(jnp.floor(x + 0.5), 0.0, 255.0)


def warp_image(image: jax.Array, *, size: tuple[int, int], scale, offset, fill) -> jax.Array:
  """Returns uint8 `[H, W, 3]`: `image [h, w, 3]` mapped by `x' = x * scale + offset` (positive (sx, sy), traced
  or not) onto a `size` canvas of `fill` (`geometric.paste_affine` + `warp_example`'s canvas, on device)."""
  (h_out, w_out), (h_in, w_in) = size, image.shape[:2]
  wx, in_x = resample_weights(w_out, w_in, scale[0], offset[0])
  wy, in_y = resample_weights(h_out, h_in, scale[1], offset[1])
  rows = _round8(jnp.einsum("xj,ijc->ixc", wx, image.astype(jnp.float32), precision=_HIGHEST))  # [h_in, W, 3]
  out = _round8(jnp.einsum("yi,ixc->yxc", wy, rows, precision=_HIGHEST))
  inside = in_y[:, None, None] & in_x[None, :, None]
  return jnp.where(inside, out, jnp.asarray(fill, jnp.float32)).astype(jnp.uint8)


def map_boxes(boxes: jax.Array, *, scale, offset) -> jax.Array:
  """Returns `[M, 4]` xyxy boxes under `x' = x * scale + offset`; a negative scale (flip) swaps the corners."""
  sx, sy = scale
  tx, ty = offset
  xa, xb = boxes[:, 0] * sx + tx, boxes[:, 2] * sx + tx
  ya, yb = boxes[:, 1] * sy + ty, boxes[:, 3] * sy + ty
  flip_x, flip_y = sx < 0, sy < 0
  return jnp.stack([jnp.where(flip_x, xb, xa), jnp.where(flip_y, yb, ya),
                    jnp.where(flip_x, xa, xb), jnp.where(flip_y, ya, yb)], axis=1)


def compose_frame(frame: jax.Array, *, scale, offset) -> jax.Array:
  """Returns `[4]` (sx, sy, tx, ty): `frame` followed by `x' = x * scale + offset` (`geometric.compose_frame`)."""
  sx, sy, tx, ty = frame[0], frame[1], frame[2], frame[3]
  return jnp.stack([sx * scale[0], sy * scale[1], tx * scale[0] + offset[0], ty * scale[1] + offset[1]])


def transform_boxes(boxes: jax.Array, *, source_hw: tuple[int, int], scale, offset, window_hw: tuple[int, int],
                    min_size: float, min_visible: float) -> tuple[jax.Array, jax.Array]:
  """Returns `(boxes [M, 4], keep [M] bool)` under the box rule of `geometric.transform_boxes`, window at 0."""
  h, w = source_hw
  wh, ww = window_hw
  boxes = jnp.clip(boxes, 0.0, jnp.array([w, h, w, h], jnp.float32))
  mapped = map_boxes(boxes, scale=scale, offset=offset)
  clipped = jnp.clip(mapped, 0.0, jnp.array([ww, wh, ww, wh], jnp.float32))
  cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
  area = (mapped[:, 2] - mapped[:, 0]) * (mapped[:, 3] - mapped[:, 1])
  keep = (cw >= min_size) & (ch >= min_size) & (cw * ch >= min_visible * area)
  return clipped, keep


def compact_boxes(example: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Returns the example with its valid boxes first (in order) and the rest zeroed: the host collate's layout."""
  valid = example["valid"]
  order = jnp.argsort(~valid, stable=True)
  out = dict(example)
  kept = valid[order]
  for key in BOX_FIELDS:
    if key in example:
      moved = example[key][order]
      mask = kept.reshape(kept.shape + (1,) * (moved.ndim - 1))
      out[key] = jnp.where(mask, moved, jnp.zeros((), moved.dtype))
  return out


def flip_example(example: dict[str, jax.Array], flip) -> dict[str, jax.Array]:
  """Returns the example mirrored left-right where `flip` (a traced bool): `geometric.hflip` on device."""
  image = example["image"]
  w = float(image.shape[1])
  out = dict(example, image=jnp.where(flip, image[:, ::-1], image))
  scale = (jnp.where(flip, -1.0, 1.0), 1.0)
  offset = (jnp.where(flip, w, 0.0), 0.0)
  out["boxes"] = map_boxes(example["boxes"], scale=scale, offset=offset)
  if "frame" in example:
    out["frame"] = compose_frame(example["frame"], scale=scale, offset=offset)
  return out


def warp_example(example: dict[str, jax.Array], *, size: tuple[int, int], scale, offset, fill: int,
                 min_size: float, min_visible: float) -> dict[str, jax.Array]:
  """Returns the example mapped by `x' = x * scale + offset` onto a `size` canvas: `geometric.warp_example`.

  Boxes the rule drops become invalid (compact with `compact_boxes`). With static unit scale and zero offset
  onto a canvas of the image's size (a letterbox of a same-size image) the image is passed through unchanged.
  """
  image = example["image"]
  source_hw = image.shape[:2]
  identity = (all(isinstance(v, (int, float)) for v in (*scale, *offset)) and tuple(scale) == (1, 1)
              and tuple(offset) == (0, 0) and tuple(source_hw) == tuple(size))
  out = dict(example)
  if not identity:
    out["image"] = warp_image(image, size=size, scale=scale, offset=offset, fill=fill)
  boxes, keep = transform_boxes(example["boxes"], source_hw=source_hw, scale=scale, offset=offset, window_hw=size,
                                min_size=min_size, min_visible=min_visible)
  out["boxes"], out["valid"] = boxes, example["valid"] & keep
  if "frame" in example:
    out["frame"] = compose_frame(example["frame"], scale=scale, offset=offset)
  return out


def letterbox_params(source_hw: tuple[int, int], size: tuple[int, int]) -> tuple[tuple[float, float], tuple[int, int]]:
  """Returns the static `(scale, offset)` of `geometric.letterbox` from `source_hw` onto `size` (both (h, w))."""
  (ih, iw), (h, w) = source_hw, size
  s = min(h / ih, w / iw)
  nh, nw = max(1, min(h, round(ih * s))), max(1, min(w, round(iw * s)))
  return (nw / iw, nh / ih), ((w - nw) // 2, (h - nh) // 2)


def draw_scale_crop(key: jax.Array, *, source_hw: tuple[int, int], size: tuple[int, int],
                    scale_range: tuple[float, float]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Returns `(k, (tx, ty))` of a random scale + crop: `geometric.draw_scale_crop`'s distribution, from `key`."""
  (ih, iw), (h, w) = source_hw, size
  kr, kx, ky = jax.random.split(key, 3)
  r = jax.random.uniform(kr, minval=scale_range[0], maxval=scale_range[1])
  k = max(h, w) / (r * max(ih, iw))
  cw, ch = w / k, h / k
  x0 = jax.random.uniform(kx, minval=jnp.minimum(0.0, iw - cw), maxval=jnp.maximum(0.0, iw - cw))
  y0 = jax.random.uniform(ky, minval=jnp.minimum(0.0, ih - ch), maxval=jnp.maximum(0.0, ih - ch))
  return k, (-x0 * k, -y0 * k)


def color_matrix(mean_color: jax.Array, *, factors: jax.Array, order: jax.Array,
                 lighting: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns `(m [3, 3], b [3])`: `photometric.adjust_color`'s composed colour map `rgb' = m @ rgb + b`.

  `factors [3]` are (brightness, contrast, saturation), applied in `order [3]` (a permutation of 0, 1, 2);
  contrast blends with the grey of its input's mean colour (`mean_color [3]`, of the image before the chain);
  `lighting [3]` are the PCA noise alphas.
  """
  gray = jnp.asarray(_GRAY, jnp.float32)
  blend_gray = jnp.outer(jnp.ones(3), gray)

  def brightness(m, b, a):
    return a * m, a * b

  def contrast(m, b, a):
    return a * m, a * b + (1 - a) * (gray @ (m @ mean_color + b))

  def saturation(m, b, a):
    blend = a * jnp.eye(3) + (1 - a) * blend_gray
    return blend @ m, blend @ b

  m, b = jnp.eye(3, dtype=jnp.float32), jnp.zeros(3, jnp.float32)
  for i in range(3):
    m, b = jax.lax.switch(order[i], (brightness, contrast, saturation), m, b, factors[order[i]])
  b = b + 255.0 * (jnp.asarray(_EIGVEC, jnp.float32) @ (jnp.asarray(_EIGVAL, jnp.float32) * lighting))
  return m, b


def adjust_color(image: jax.Array, *, factors: jax.Array, order: jax.Array, lighting: jax.Array) -> jax.Array:
  """Returns uint8 `[H, W, 3]`: `image` under `color_matrix`, rounded half up and clipped (PIL's matrix convert)."""
  x = image.astype(jnp.float32)
  m, b = color_matrix(x.mean(axis=(0, 1)), factors=factors, order=order, lighting=lighting)
  return _round8(jnp.einsum("hwc,dc->hwd", x, m, precision=_HIGHEST) + b).astype(jnp.uint8)


def check_supported(augment: Augment) -> None:
  """Raises ValueError naming the option when `augment` needs a part that has no device version."""
  if not isinstance(augment, Augment):
    raise ValueError(f"device augmentation runs CenterNet's pipeline (Augment) only, not {type(augment).__name__}")
  if augment.hue > 0:
    raise ValueError(f"augment.hue={augment.hue}: hue rotation (PIL's 8-bit HSV) has no device version; set it to "
                     "0 or turn device_augment off")


def augment_example(example: dict[str, jax.Array], key: jax.Array, *, size: int | Sequence[int],
                    augment: Augment = Augment()) -> dict[str, jax.Array]:
  """Returns the training view of one example at `size`: flip, letterbox or random scale + crop, colour jitter
  (`transforms.train_transform`'s order and options; see the module docstring), boxes compacted."""
  check_supported(augment)
  a, size = augment, as_size(size)
  k_flip, k_crop, k_factors, k_order, k_light = jax.random.split(key, 5)
  example = flip_example(example, jax.random.uniform(k_flip) < a.flip_prob)
  source_hw = tuple(example["image"].shape[:2])
  if a.scale_range is None:
    scale, offset = letterbox_params(source_hw, size)
  else:
    k, offset = draw_scale_crop(k_crop, source_hw=source_hw, size=size, scale_range=a.scale_range)
    scale = (k, k)
  example = warp_example(example, size=size, scale=scale, offset=offset, fill=a.fill, min_size=a.min_size,
                         min_visible=a.min_visible)
  strengths = np.array([a.brightness, a.contrast, a.saturation], np.float32)
  if strengths.any() or a.lighting > 0:
    factors = 1.0 + jnp.where(strengths > 0, jax.random.uniform(k_factors, (3,), minval=-1.0) * strengths, 0.0)
    alpha = jax.random.normal(k_light, (3,)) * a.lighting
    example["image"] = adjust_color(example["image"], factors=factors, order=jax.random.permutation(k_order, 3),
                                    lighting=alpha)
  return compact_boxes(example)


def example_keys(positions: jax.Array, *, seed: int) -> jax.Array:
  """Returns `[B, 2]` raw keys, one per global stream position `positions [B]` (int32): the module's key rule."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), AUGMENT_STREAM)
  return jax.vmap(lambda p: jax.random.fold_in(base, p))(positions)


def augment_batch(batch: dict[str, jax.Array], *, seed: int, size: int | Sequence[int],
                  augment: Augment = Augment()) -> dict[str, jax.Array]:
  """Returns the augmented batch: `augment_example` vmapped over `batch` (uint8 `image [B, h, w, 3]`, the box
  fields `[B, M, ...]`, `position [B]` int32, optional `frame [B, 4]`); other fields pass through unchanged.

  Jit it, or call it inside the jitted train step, where XLA shards it along the batch like the step.
  """
  check_supported(augment)
  if "proposals" in batch:
    raise ValueError("device augmentation does not move per-image proposals; turn device_augment off for "
                     "detectors on proposals")
  if "position" not in batch:
    raise ValueError("device augmentation needs batch['position'] (the cached loader's global positions)")
  fields = [k for k in ("image", *BOX_FIELDS, "frame") if k in batch]
  keys = example_keys(batch["position"], seed=seed)
  out = jax.vmap(lambda ex, k: augment_example(ex, k, size=size, augment=augment))({k: batch[k] for k in fields},
                                                                                   keys)
  return {**batch, **out}
