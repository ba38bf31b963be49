"""Renders one scene of the `shapes` data set: textured background, labelled shapes, tight boxes from pixels.

A scene is a pure function of a NumPy generator, so the data set is reproducible from `(seed, split, index)`.
Objects are painted in order (later over earlier); a placement that would leave an earlier object with less than
`min_visible` of its pixels, or fewer than `min_pixels` pixels, is re-drawn elsewhere (or dropped after a few
tries), so every labelled object stays clearly visible. Each box is tight around the object's visible pixels in the
continuous convention (pixel `(i, j)` covers `[j, j+1) x [i, i+1)`), and `area` is the visible pixel count — what
COCO's segmentation area is, and what its small / medium / large ranges read.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross", "ring")


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """What a scene may contain; sizes are fractions of the image side so a spec scales with the image.

  Attributes:
    image_size: height and width of the square image in pixels.
    max_objects: objects per image are drawn uniformly from `1..max_objects` (before rejected placements).
    empty_rate: probability that an image has no object at all.
    min_size, max_size: range of sqrt(width * height) of an object's extent, as fractions of `image_size`;
      sampled log-uniformly so small objects are as common as in COCO.
    big_rate, big_size: probability that an object is instead a big one, of size in `big_size` (fractions of
      `image_size`, aspect at most 1.5); big objects are painted first, so that later objects occlude them rather
      than being hidden. Without them COCO's "large" range (over 96^2 pixels) would be nearly empty at 128 x 128.
    max_aspect: width / height is log-uniform in `[1 / max_aspect, max_aspect]`.
    min_visible: fraction of an object's painted pixels that must stay visible after later objects.
    min_pixels: fewest visible pixels a labelled object may keep.
  """

  image_size: int = 128
  max_objects: int = 6
  empty_rate: float = 0.08
  min_size: float = 0.06
  max_size: float = 0.9
  big_rate: float = 0.15
  big_size: tuple[float, float] = (0.75, 1.0)
  max_aspect: float = 3.0
  min_visible: float = 0.6
  min_pixels: int = 12


@dataclasses.dataclass(frozen=True)
class Scene:
  """A rendered scene.

  Attributes:
    image: uint8 `[H, W, 3]` RGB.
    background: uint8 `[H, W, 3]` the background alone (equal to `image` wherever no object is visible).
    instances: int32 `[H, W]` index of the visible object at each pixel, -1 for background.
    boxes: float32 `[N, 4]` xyxy pixels, tight around each object's visible pixels.
    labels: int32 `[N]` class index into `CLASS_NAMES`.
    areas: int64 `[N]` visible pixel count of each object.
  """

  image: np.ndarray
  background: np.ndarray
  instances: np.ndarray
  boxes: np.ndarray
  labels: np.ndarray
  areas: np.ndarray


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """Returns `[size, size]` value noise in [0, 1]: a random `cells x cells` grid, bilinearly upsampled."""
  grid = rng.uniform(size=(cells + 1, cells + 1))
  t = (np.arange(size) + 0.5) / size * cells
  i = np.minimum(t.astype(int), cells - 1)
  f = t - i
  rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
  return (rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]).astype(np.float32)


def render_background(rng: np.random.Generator, size: int) -> np.ndarray:
  """Returns a float32 `[size, size, 3]` textured background in [0, 255]: gradient, blobs or stripes, noise.

  The texture uses the same colour range as the objects, so colour alone does not separate object from background.
  """
  t = ((np.arange(size, dtype=np.float32) + 0.5) / size)
  x, y = t[None, :], t[:, None]
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y
  ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
  c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
  img = c0 + ramp[..., None] * (c1 - c0)
  kind = rng.integers(3)
  if kind == 0:  # soft blobs of other colours; a Gaussian is separable, so each is an outer product
    for _ in range(int(rng.integers(2, 6))):
      cx, cy = rng.uniform(0, 1, 2)
      r = rng.uniform(0.08, 0.35)
      gx = np.exp(-(t - cx) ** 2 / (2 * r * r)).astype(np.float32)
      gy = np.exp(-(t - cy) ** 2 / (2 * r * r)).astype(np.float32) * np.float32(rng.uniform(0.4, 0.9))
      weight = (gy[:, None] * gx[None, :])[..., None]
      img += weight * (rng.uniform(0, 255, 3).astype(np.float32) - img)
  elif kind == 1:  # stripes at a random angle and frequency
    a = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 14)
    phase = 2 * np.pi * freq * (np.float32(np.cos(a)) * x + np.float32(np.sin(a)) * y) + np.float32(rng.uniform(0, 7))
    weight = (0.25 + 0.25 * np.sin(phase))[..., None]
    img += weight * (rng.uniform(0, 255, 3).astype(np.float32) - img)
  # Every background gets low-frequency value noise and pixel noise.
  img += (_smooth_noise(rng, size, int(rng.integers(3, 9))) - 0.5)[..., None] * np.float32(rng.uniform(20, 70))
  img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 8))
  return np.clip(img, 0, 255, out=img)


def shape_mask(label: int, u: np.ndarray, v: np.ndarray, params: np.ndarray) -> np.ndarray:
  """Returns a bool mask of shape `label` at normalised coordinates `u, v` (the shape spans [-1, 1]^2).

  `params` holds the class's free parameter in [0, 1] (cross arm width, ring hole size).
  """
  if label == 0:  # rectangle
    return (np.abs(u) <= 1) & (np.abs(v) <= 1)
  if label == 1:  # ellipse
    return u * u + v * v <= 1
  if label == 2:  # isosceles triangle, apex at v = -1
    return (v <= 1) & (np.abs(u) <= (v + 1) / 2)
  if label == 3:  # plus-shaped cross
    t = 0.22 + 0.18 * params[0]
    return ((np.abs(u) <= t) & (np.abs(v) <= 1)) | ((np.abs(v) <= t) & (np.abs(u) <= 1))
  r2 = u * u + v * v  # ring
  inner = 0.45 + 0.25 * params[0]
  return (r2 <= 1) & (r2 >= inner * inner)


def _draw_object(rng: np.random.Generator, spec: SceneSpec, label: int, big: bool):
  """Returns `(y0, x0, mask)`: a random placement of shape `label` as a bool mask window at (y0, x0)."""
  size = spec.image_size
  if big:
    side = rng.uniform(*spec.big_size) * size
    aspect = np.exp(rng.uniform(-np.log(1.5), np.log(1.5)))
  else:
    side = np.exp(rng.uniform(np.log(spec.min_size), np.log(spec.max_size))) * size
    aspect = np.exp(rng.uniform(-np.log(spec.max_aspect), np.log(spec.max_aspect)))
  half_w, half_h = side * np.sqrt(aspect) / 2, side / np.sqrt(aspect) / 2
  # Rectangles and crosses keep mostly axis-aligned poses, like the boxes they are labelled with.
  theta = rng.uniform(0, 2 * np.pi) if label == 2 or rng.uniform() < 0.3 else 0.0
  c, s = np.cos(theta), np.sin(theta)
  ext_x = min(abs(c) * half_w + abs(s) * half_h, size / 2)
  ext_y = min(abs(s) * half_w + abs(c) * half_h, size / 2)
  cx = rng.uniform(ext_x, size - ext_x)
  cy = rng.uniform(ext_y, size - ext_y)
  x0, x1 = max(int(np.floor(cx - ext_x)), 0), min(int(np.ceil(cx + ext_x)), size)
  y0, y1 = max(int(np.floor(cy - ext_y)), 0), min(int(np.ceil(cy + ext_y)), size)
  yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
  dx, dy = xx + 0.5 - cx, yy + 0.5 - cy  # pixel centres
  u = (c * dx + s * dy) / half_w
  v = (-s * dx + c * dy) / half_h
  return y0, x0, shape_mask(label, u, v, rng.uniform(size=1))


def _object_colour(rng: np.random.Generator, local: np.ndarray) -> np.ndarray:
  """Returns an RGB colour at least 60 (Euclidean) from the mean background colour under the object."""
  for _ in range(20):
    colour = rng.uniform(0, 255, 3)
    if np.linalg.norm(colour - local) >= 60:
      return colour
  return np.where(local > 127, 0.0, 255.0)


def render_scene(rng: np.random.Generator, spec: SceneSpec) -> Scene:
  """Returns a random `Scene` drawn from `rng` under `spec` (see the module docstring for the rules)."""
  size = spec.image_size
  background = render_background(rng, size)
  image = background.copy()
  instances = np.full((size, size), -1, np.int32)
  num = 0 if rng.uniform() < spec.empty_rate else int(rng.integers(1, spec.max_objects + 1))
  big = rng.uniform(size=num) < spec.big_rate
  kinds = rng.integers(len(CLASS_NAMES), size=num)
  painted, visible, labels = [], np.zeros(0, np.int64), []  # per accepted object
  for i in np.argsort(~big, kind="stable"):  # big objects first
    label = int(kinds[i])
    for _ in range(10):
      y0, x0, mask = _draw_object(rng, spec, label, bool(big[i]))
      if mask.sum() < spec.min_pixels:
        continue
      window = instances[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
      left = visible - np.bincount(window[mask] + 1, minlength=len(labels) + 1)[1:]
      if np.all((left >= spec.min_visible * np.asarray(painted)) & (left >= spec.min_pixels)):
        break
    else:
      continue  # no acceptable placement: leave the object out
    window[mask] = len(labels)
    patch = image[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
    colour = _object_colour(rng, patch[mask].mean(axis=0))
    # A faint shading ramp and pixel noise keep objects from being flat colour fields.
    shade = np.linspace(-1, 1, mask.shape[0], dtype=np.float32)[:, None, None] * np.float32(rng.uniform(-12, 12))
    fill = colour.astype(np.float32) + shade + 3 * rng.standard_normal(patch.shape, dtype=np.float32)
    patch[mask] = fill[mask]
    painted.append(int(mask.sum()))
    visible = np.append(left, painted[-1])
    labels.append(label)
  boxes, areas = _tight_boxes(instances, len(labels))
  return Scene(image=np.clip(np.rint(image), 0, 255).astype(np.uint8),
               background=np.clip(np.rint(background), 0, 255).astype(np.uint8), instances=instances,
               boxes=boxes, labels=np.asarray(labels, np.int32), areas=areas)


def _tight_boxes(instances: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns float32 `[num, 4]` xyxy boxes around each instance's pixels and int64 `[num]` pixel counts."""
  boxes = np.zeros((num, 4), np.float32)
  areas = np.zeros(num, np.int64)
  for k in range(num):
    rows = np.flatnonzero((instances == k).any(axis=1))
    cols = np.flatnonzero((instances == k).any(axis=0))
    boxes[k] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    areas[k] = int((instances == k).sum())
  return boxes, areas
