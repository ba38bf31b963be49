"""Boxes drawn on images, for looking at data, augmentations and predictions; PNG output."""

from __future__ import annotations

import colorsys
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_color(label: int) -> tuple[int, int, int]:
  """Returns the RGB colour of class `label`: hues spaced by the golden ratio, so neighbouring ids differ."""
  hue = (int(label) * 0.618033988749895) % 1.0
  r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
  return int(r * 255), int(g * 255), int(b * 255)


def draw_boxes(image, boxes, *, labels=None, scores=None, class_names: Sequence[str] | None = None, valid=None,
               width: int = 2) -> np.ndarray:
  """Returns a uint8 `[H, W, 3]` copy of `image` with `boxes` outlined, coloured by class, captioned.

  `boxes [N, 4]` xyxy pixels of this image; `labels [N]` class indices (colour and caption; one colour if None);
  `scores [N]` appended to the caption; `class_names` turn labels into names; `valid [N]` bool skips padded
  slots (a batch's `valid` or a detector's output mask). Accepts NumPy or JAX arrays; a float image is taken
  to be in 0..255.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  n = boxes.shape[0]
  keep = np.ones(n, bool) if valid is None else np.asarray(valid, bool).reshape(n)
  canvas = Image.fromarray(image).convert("RGB")
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()
  for i in np.nonzero(keep & np.all(np.isfinite(boxes), axis=1))[0]:
    x1, y1, x2, y2 = (float(v) for v in boxes[i])
    label = None if labels is None else int(np.asarray(labels).reshape(n)[i])
    color = class_color(0 if label is None else label)
    draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
    parts = []
    if label is not None:
      parts.append(class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label))
    if scores is not None:
      parts.append(f"{float(np.asarray(scores).reshape(n)[i]):.2f}")
    if parts:
      text = " ".join(parts)
      left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
      tw, th = right - left, bottom - top + 2
      ty = y1 - th if y1 - th >= 0 else y1  # above the box, or just inside it at the top edge
      draw.rectangle([x1, ty, x1 + tw + 2, ty + th], fill=color)
      luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
      draw.text((x1 + 1 - left, ty + 1 - top), text, fill=(0, 0, 0) if luma > 128 else (255, 255, 255), font=font)
  return np.asarray(canvas)


def save_png(path: str | os.PathLike, image) -> str:
  """Writes uint8 `[H, W, 3]` `image` to `path` as PNG (creating its folder) and returns the path."""
  path = os.fspath(path)
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  Image.fromarray(np.asarray(image, np.uint8)).save(path, format="PNG")
  return path
