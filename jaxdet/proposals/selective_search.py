"""Selective search (Uijlings et al., IJCV 2013; course A1): class-agnostic region proposals on the host, in NumPy.

For each strategy (a colour space, a threshold k of the Felzenszwalb-Huttenlocher segmentation, and a combination
of similarities):
  1. initial regions: FH graph segmentation (scikit-image's `felzenszwalb`, sigma 0.8, min_size k, as the paper's
     code) of the image in that colour space;
  2. hierarchical grouping: repeatedly merge the two most similar adjacent regions until one region is left; every
     region ever formed (initial and merged) is a proposal, its bounding box;
  3. similarities (sec. 3.2), each in [0, 1], summed over the strategy's selection:
       colour   sum_k min(c_i^k, c_j^k), c = 25-bin histogram per channel, the concatenation L1-normalised;
       texture  sum_k min(t_i^k, t_j^k), t = 10-bin histograms of Gaussian derivatives (sigma 1) in 8 orientations
                per channel, L1-normalised;
       size     1 - (|r_i| + |r_j|) / |im|;
       fill     1 - (|BB_ij| - |r_i| - |r_j|) / |im|, BB_ij the tight box around both;
     merged histograms are the size-weighted means, so nothing is recomputed from pixels.
Diversification (sec. 3.4) is the union over strategies; the paper's "fast" mode is colour spaces HSV and Lab,
k in {50, 100}, similarities C+T+S+F and T+S+F (8 strategies); "quality" is HSV, Lab, rgI, H and I,
k in {50, 100, 150, 300}, and C+T+S+F, T+S+F, F+S, S (80 strategies). Ranking (sec. 3.5): within a hierarchy the
region formed last (the whole image) has position 1, the first initial region the highest position; each box gets
`position * u`, u ~ U(0, 1) from a generator seeded per image, all strategies' boxes are sorted by that value and
exact duplicates are removed (the first kept).

Scaled to small images: FH's k is a pixel-count scale (a component of |C| pixels merges across an edge while the
edge is below its internal difference + k / |C|), and the paper's k were chosen for PASCAL images of about
500 x 375 pixels. `k_scale` multiplies both k and min_size: "linear" (the default) by the image's side over the
paper's, sqrt(H W / (500 x 375)) (0.296 at 128 x 128); "area" by the area ratio (0.087), which keeps the
segmentation's granularity relative to the image but gives ~6x more initial regions. Measured on 30 `shapes`
validation images (fast mode): "area" 3,980 boxes, 0.63 s per image, recall@0.5 0.84 / 0.97 / 1.0 at 100 / 300 /
1,000 proposals; "linear" (0.3) 610 boxes, 0.15 s, 0.91 / 0.97 / 1.0; the paper's k unscaled (1.0) 118 boxes,
0.11 s, at most 0.94. Texture orientations: the first Gaussian derivatives (gx, gy) steered to theta = 0, 45, ...,
315 degrees and half-wave rectified (so opposite orientations differ), binned over [0, the channel's largest
response].
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np

COLOR_SPACES = ("rgb", "hsv", "lab", "rgi", "h", "i")
SIMILARITIES = ("color", "texture", "size", "fill")
COLOR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8
PAPER_IMAGE_AREA = 500.0 * 375.0

CTSF = ("color", "texture", "size", "fill")
TSF = ("texture", "size", "fill")


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One diversification strategy: segmentation colour space and k, and the similarities summed when grouping."""
  color_space: str
  k: float
  similarities: tuple[str, ...]


def mode_strategies(mode: str) -> list[Strategy]:
  """Returns the paper's strategies of `mode`: "fast" (8) or "quality" (80), or "single" (HSV, k=100, C+T+S+F)."""
  if mode == "single":
    return [Strategy("hsv", 100.0, CTSF)]
  if mode == "fast":
    spaces, ks, sims = ("hsv", "lab"), (50.0, 100.0), (CTSF, TSF)
  elif mode == "quality":
    spaces, ks, sims = ("hsv", "lab", "rgi", "h", "i"), (50.0, 100.0, 150.0, 300.0), (
        CTSF, TSF, ("fill", "size"), ("size",))
  else:
    raise ValueError(f"selective search mode must be single, fast or quality, got {mode!r}")
  return [Strategy(c, k, s) for c, k, s in itertools.product(spaces, ks, sims)]


def convert_color(image: np.ndarray, space: str) -> np.ndarray:
  """Returns float64 `[H, W, C]` of the uint8 RGB `image [H, W, 3]` in colour space `space`, each channel in [0, 1].

  rgb; hsv (scikit-image); lab (L / 100, (a + 128) / 255, (b + 128) / 255); rgi (r = R / (R + G + B),
  g = G / (R + G + B), intensity); h (hue alone, C = 1); i (intensity (R + G + B) / 3, C = 1).
  """
  rgb = np.asarray(image, np.float64) / 255.0
  if space == "rgb":
    return rgb
  if space in ("hsv", "h"):
    from skimage.color import rgb2hsv  # pylint: disable=g-import-not-at-top
    hsv = rgb2hsv(rgb)
    return hsv if space == "hsv" else hsv[..., :1]
  if space == "lab":
    from skimage.color import rgb2lab  # pylint: disable=g-import-not-at-top
    lab = rgb2lab(rgb)
    return np.clip(np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128.0) / 255.0, (lab[..., 2] + 128.0) / 255.0],
                            axis=-1), 0.0, 1.0)
  total = rgb.sum(axis=-1, keepdims=True)
  intensity = total / 3.0
  if space == "i":
    return intensity
  if space == "rgi":
    chroma = np.where(total > 0, rgb[..., :2] / np.maximum(total, 1e-12), 1.0 / 3.0)
    return np.concatenate([chroma, intensity], axis=-1)
  raise ValueError(f"colour space must be one of {COLOR_SPACES}, got {space!r}")


def segment(image: np.ndarray, *, k: float, min_size: float, sigma: float = 0.8) -> np.ndarray:
  """Returns int `[H, W]` Felzenszwalb-Huttenlocher region labels 0..R-1 of a float `[H, W, C]` image in [0, 1].

  scikit-image's implementation (its `scale` is the paper's k on 0..255 intensities: it divides k by 255), with the
  colour channels compared by Euclidean distance as the FH reference code.
  """
  from skimage.segmentation import felzenszwalb  # pylint: disable=g-import-not-at-top
  labels = felzenszwalb(image, scale=float(k), sigma=sigma, min_size=max(1, int(round(min_size))), channel_axis=-1)
  _, labels = np.unique(labels, return_inverse=True)  # consecutive 0..R-1
  return labels.reshape(image.shape[:2])


def _gaussian_kernels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
  radius = int(np.ceil(4 * sigma))
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  g = np.exp(-0.5 * (x / sigma) ** 2)
  g /= g.sum()
  return g, -x / sigma**2 * g  # the Gaussian and its derivative


def _filter(image: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
  """Correlates a `[H, W]` image with a 1-D kernel along `axis`, edges replicated."""
  r = len(kernel) // 2
  pad = [(0, 0), (0, 0)]
  pad[axis] = (r, r)
  padded = np.pad(image, pad, mode="edge")
  n = image.shape[axis]
  out = np.zeros_like(image)
  for t, w in enumerate(kernel[::-1]):  # convolution: flip the kernel
    out += w * np.take(padded, np.arange(t, t + n), axis=axis)
  return out


def oriented_gradients(channel: np.ndarray, *, sigma: float = 1.0) -> np.ndarray:
  """Returns `[8, H, W]` non-negative Gaussian-derivative responses of a `[H, W]` channel at theta = k * 45 degrees.

  r_k = max(0, cos(theta_k) gx + sin(theta_k) gy) with gx, gy the derivatives of the Gaussian-smoothed channel
  (sigma 1, as the paper).
  """
  g, dg = _gaussian_kernels(sigma)
  gx = _filter(_filter(channel, g, 0), dg, 1)
  gy = _filter(_filter(channel, g, 1), dg, 0)
  theta = np.arange(ORIENTATIONS) * (2 * np.pi / ORIENTATIONS)
  return np.maximum(np.cos(theta)[:, None, None] * gx + np.sin(theta)[:, None, None] * gy, 0.0)


def _histograms(labels: np.ndarray, values: np.ndarray, num_regions: int, bins: int, high: float) -> np.ndarray:
  """Returns `[R, bins]` counts of `values [H, W]` in `bins` equal bins over [0, high] for each region."""
  idx = np.minimum((values / max(high, 1e-12) * bins).astype(np.int64), bins - 1)
  return np.bincount((labels * bins + idx).ravel(), minlength=num_regions * bins).reshape(num_regions, bins)


def _l1(h: np.ndarray) -> np.ndarray:
  return h / np.maximum(h.sum(axis=1, keepdims=True), 1e-12)


def region_features(image: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """Returns the initial regions' features: `color [R, 25 C]`, `texture [R, 80 C]` (L1-normalised), `size [R]`
  pixels and `box [R, 4]` xyxy (continuous: a region's pixels span [min col, max col + 1])."""
  num = int(labels.max()) + 1
  channels = image.shape[-1]
  color = np.concatenate([_histograms(labels, image[..., c], num, COLOR_BINS, 1.0) for c in range(channels)], axis=1)
  texture = []
  for c in range(channels):
    responses = oriented_gradients(image[..., c])
    high = float(responses.max())
    texture += [_histograms(labels, r, num, TEXTURE_BINS, high) for r in responses]
  size = np.bincount(labels.ravel(), minlength=num).astype(np.float64)
  rows, cols = np.indices(labels.shape)
  box = np.empty((num, 4), np.float64)
  box[:, 0] = np.full(num, np.inf)
  box[:, 1] = np.full(num, np.inf)
  np.minimum.at(box[:, 0], labels.ravel(), cols.ravel())
  np.minimum.at(box[:, 1], labels.ravel(), rows.ravel())
  box[:, 2] = 0
  box[:, 3] = 0
  np.maximum.at(box[:, 2], labels.ravel(), cols.ravel() + 1)
  np.maximum.at(box[:, 3], labels.ravel(), rows.ravel() + 1)
  return {"color": _l1(color.astype(np.float64)), "texture": _l1(np.concatenate(texture, 1).astype(np.float64)),
          "size": size, "box": box}


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
  """Returns int `[E, 2]` unique pairs (i < j) of regions that touch (4-connected pixels with different labels)."""
  a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
  b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
  differ = a != b
  pairs = np.stack([np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])], axis=1)
  return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)


def similarity(f: dict[str, np.ndarray], i: np.ndarray | int, j: np.ndarray | int, *, image_size: float,
               kinds: Sequence[str]) -> np.ndarray:
  """Returns the summed similarities `kinds` between regions `i` and `j` (index arrays broadcast) of features `f`."""
  total = 0.0
  for kind in kinds:
    if kind == "color":
      total = total + np.minimum(f["color"][i], f["color"][j]).sum(axis=-1)
    elif kind == "texture":
      total = total + np.minimum(f["texture"][i], f["texture"][j]).sum(axis=-1)
    elif kind == "size":
      total = total + 1.0 - (f["size"][i] + f["size"][j]) / image_size
    elif kind == "fill":
      bi, bj = f["box"][i], f["box"][j]
      bw = np.maximum(bi[..., 2], bj[..., 2]) - np.minimum(bi[..., 0], bj[..., 0])
      bh = np.maximum(bi[..., 3], bj[..., 3]) - np.minimum(bi[..., 1], bj[..., 1])
      total = total + 1.0 - (bw * bh - f["size"][i] - f["size"][j]) / image_size
    else:
      raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")
  return np.asarray(total, np.float64)


def hierarchical_grouping(features: dict[str, np.ndarray], pairs: np.ndarray, *, image_size: float,
                          similarities: Sequence[str]) -> np.ndarray:
  """Returns `[2R - 1, 4]` boxes (fewer if the regions are not all connected) of every region of the hierarchy:
  the R initial regions, then each merged region in the order it was formed (the greedy algorithm of sec. 3.1).

  The most similar adjacent pair is merged (ties: lowest index pair); the new region's histograms are the
  size-weighted means of its parts, its neighbours the union of theirs.
  """
  r = len(features["size"])
  n = 2 * r - 1
  f = {k: np.concatenate([v, np.zeros((n - r, *v.shape[1:]), v.dtype)]) for k, v in features.items()}
  sim = np.full((n, n), -np.inf)
  if len(pairs):
    s = similarity(f, pairs[:, 0], pairs[:, 1], image_size=image_size, kinds=similarities)
    sim[pairs[:, 0], pairs[:, 1]] = s
    sim[pairs[:, 1], pairs[:, 0]] = s
  best = sim.max(axis=1)
  best_at = sim.argmax(axis=1)
  t = r
  while t < n:
    i = int(np.argmax(best))
    if not np.isfinite(best[i]):
      break  # no adjacent pair left
    j = int(best_at[i])
    si, sj = f["size"][i], f["size"][j]
    for key in ("color", "texture"):
      f[key][t] = (si * f[key][i] + sj * f[key][j]) / (si + sj)
    f["size"][t] = si + sj
    f["box"][t] = [min(f["box"][i, 0], f["box"][j, 0]), min(f["box"][i, 1], f["box"][j, 1]),
                   max(f["box"][i, 2], f["box"][j, 2]), max(f["box"][i, 3], f["box"][j, 3])]
    neighbours = np.flatnonzero(np.isfinite(sim[i]) | np.isfinite(sim[j]))
    neighbours = neighbours[(neighbours != i) & (neighbours != j)]
    sim[[i, j], :] = -np.inf
    sim[:, [i, j]] = -np.inf
    best[[i, j]] = -np.inf
    if len(neighbours):
      s = similarity(f, t, neighbours, image_size=image_size, kinds=similarities)
      sim[t, neighbours] = s
      sim[neighbours, t] = s
      best[t], best_at[t] = s.max(), neighbours[int(np.argmax(s))]
      stale = neighbours[(best_at[neighbours] == i) | (best_at[neighbours] == j)]
      if len(stale):
        best[stale] = sim[stale].max(axis=1)
        best_at[stale] = sim[stale].argmax(axis=1)
      better = s > best[neighbours]
      best[neighbours[better]] = s[better]
      best_at[neighbours[better]] = t
    t += 1
  return f["box"][:t]


def resolve_k_scale(k_scale: float | str, image_shape: Sequence[int]) -> float:
  """Returns the multiplier of k and min_size: a number as given, "area": H W / (500 x 375), "linear": its root."""
  if k_scale == "area":
    return float(image_shape[0] * image_shape[1]) / PAPER_IMAGE_AREA
  if k_scale == "linear":
    return float(np.sqrt(image_shape[0] * image_shape[1] / PAPER_IMAGE_AREA))
  if isinstance(k_scale, str):
    raise ValueError(f"k_scale must be a number or 'area', got {k_scale!r}")
  return float(k_scale)


def selective_search(image: np.ndarray, *, mode: str = "fast", strategies: Sequence[Strategy] | None = None,
                     k_scale: float | str = "linear", seed: int = 0, sigma: float = 0.8,
                     max_proposals: int | None = None) -> np.ndarray:
  """Returns float32 `[N, 4]` xyxy pixel boxes proposed for a uint8 `[H, W, 3]` RGB image, best-ranked first.

  Args:
    mode: the paper's strategy set ("fast", "quality"; "single": one strategy), unless `strategies` is given.
    k_scale: multiplier of the paper's k (and min_size = k), or "linear" / "area" (module docstring).
    seed: seeds the random part of the ranking (the same seed gives the same order).
    max_proposals: keep the first this many after ranking and removing duplicates.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"selective_search takes a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}")
  strategies = mode_strategies(mode) if strategies is None else list(strategies)
  scale = resolve_k_scale(k_scale, image.shape)
  rng = np.random.default_rng(seed)
  all_boxes, all_values = [], []
  segments: dict[tuple[str, float], tuple[np.ndarray, dict, np.ndarray]] = {}
  for s in strategies:
    key = (s.color_space, s.k)
    if key not in segments:  # strategies that differ only in similarities share the segmentation
      converted = convert_color(image, s.color_space)
      labels = segment(converted, k=s.k * scale, min_size=s.k * scale, sigma=sigma)
      segments[key] = (labels, region_features(converted, labels), adjacent_pairs(labels))
    labels, features, pairs = segments[key]
    boxes = hierarchical_grouping({k: v.copy() for k, v in features.items()}, pairs, image_size=float(labels.size),
                                  similarities=s.similarities)
    position = np.arange(len(boxes), 0, -1, dtype=np.float64)  # the last region formed is position 1
    all_boxes.append(boxes)
    all_values.append(position * rng.uniform(size=len(boxes)))
  boxes = np.concatenate(all_boxes)
  order = np.argsort(np.concatenate(all_values), kind="stable")
  boxes = boxes[order]
  _, first = np.unique(boxes, axis=0, return_index=True)
  boxes = boxes[np.sort(first)]
  if max_proposals is not None:
    boxes = boxes[:max_proposals]
  return boxes.astype(np.float32)
