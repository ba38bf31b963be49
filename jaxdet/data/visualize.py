"""Boxes drawn on images, for looking at data, augmentations and predictions; PNG output.

Two levels:

* `draw_boxes`: boxes and captions on the image at its own size (augmentation previews, tests).
* `draw_detections`: a picture a person can read: the image upscaled to a display scale (short side at least
  `min_side`, 512 by default), lines and a font sized for that display, ground truth as thin black-and-white
  dashes just outside the box, detections as solid boxes in a fixed colour per class, false positives crossed out
  in red, missed objects in red dashes, and labels placed (`jaxdet.data.label_placement.place_labels`) so that
  they cover neither each other nor the boxes where the scene leaves room. `legend_strip` and `tile` compose such
  pictures into a grid.

Drawing never decides what is a false positive or a miss: callers pass those flags (`jaxdet.eval.pictures`
computes them with the COCO matching).
"""

from __future__ import annotations

import colorsys
import functools
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxdet.data.label_placement import place_labels

# Saturated, mutually distinct colours by class index; no red, which marks false positives and misses.
PALETTE = (
    (255, 176, 0), (0, 153, 255), (0, 204, 102), (178, 102, 255), (255, 102, 204), (0, 214, 214), (204, 204, 0),
    (255, 128, 0), (102, 102, 255), (128, 255, 0), (153, 76, 0), (0, 128, 128), (255, 230, 128), (128, 0, 128),
    (153, 204, 255), (0, 102, 0), (192, 192, 192), (102, 51, 153),
)
MARK_COLOR = (230, 20, 20)  # false positives and missed objects
GT_COLORS = ((255, 255, 255), (0, 0, 0))  # the dashes of ground truth: visible on light and dark backgrounds
STRIP_BACKGROUND = (32, 32, 32)


def class_color(label: int) -> tuple[int, int, int]:
  """Returns the RGB colour of class `label`: `PALETTE[label]`, then hues spaced by the golden ratio.

  A function of the class index alone, so a class has the same colour in every image and every run.
  """
  label = int(label)
  if 0 <= label < len(PALETTE):
    return PALETTE[label]
  hue = (label * 0.618033988749895) % 1.0
  r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
  return int(r * 255), int(g * 255), int(b * 255)


@functools.lru_cache(maxsize=None)
def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  """Returns Pillow's built-in font at `size` pixels, or its fixed-size bitmap font where that cannot scale.

  `ImageFont.load_default(size=...)` needs Pillow >= 10.1 built with FreeType; older or FreeType-less Pillows
  get the ~11 px bitmap font (still legible, no longer sized for the display).
  """
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError, AttributeError):
    return ImageFont.load_default()


def _to_uint8(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  return image


def _text_color(background: Sequence[int]) -> tuple[int, int, int]:
  luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
  return (0, 0, 0) if luma > 128 else (255, 255, 255)


def draw_boxes(image, boxes, *, labels=None, scores=None, class_names: Sequence[str] | None = None, valid=None,
               width: int = 2) -> np.ndarray:
  """Returns a uint8 `[H, W, 3]` copy of `image` with `boxes` outlined, coloured by class, captioned.

  `boxes [N, 4]` xyxy pixels of this image; `labels [N]` class indices (colour and caption; one colour if None);
  `scores [N]` appended to the caption; `class_names` turn labels into names; `valid [N]` bool skips padded
  slots (a batch's `valid` or a detector's output mask). Accepts NumPy or JAX arrays; a float image is taken
  to be in 0..255. Draws at the image's own size; `draw_detections` draws at a size for reading.
  """
  image = _to_uint8(image)
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
      draw.text((x1 + 1 - left, ty + 1 - top), text, fill=_text_color(color), font=font)
  return np.asarray(canvas)


def display_scale(height: int, width: int, *, min_side: int = 512, scale: float | None = None) -> float:
  """Returns the factor images are drawn at: `scale` if given, else the least >= 1 making the short side >= min_side.

  Images are enlarged, never shrunk, by default: a 128 x 128 image is drawn at 4x, a 640 x 480 one at 512 / 480.
  """
  if scale is not None:
    if not scale > 0:
      raise ValueError(f"scale must be positive, got {scale}")
    return float(scale)
  return max(1.0, float(min_side) / max(1, min(int(height), int(width))))


def _dashed_line(draw: ImageDraw.ImageDraw, start, end, *, colors, width: int, dash: int) -> None:
  """A horizontal or vertical band `width` thick from `start` to `end` (inclusive), in dashes cycling `colors`."""
  (x0, y0), (x1, y1) = start, end
  horizontal = y0 == y1
  length = (x1 - x0 if horizontal else y1 - y0) + 1
  for k, offset in enumerate(range(0, length, dash)):
    color = colors[k % len(colors)]
    if color is None:
      continue
    stop = min(offset + dash, length) - 1
    if horizontal:
      draw.rectangle([x0 + offset, y0, x0 + stop, y0 + width - 1], fill=color)
    else:
      draw.rectangle([x0, y0 + offset, x0 + width - 1, y0 + stop], fill=color)


def dashed_rectangle(draw: ImageDraw.ImageDraw, rect, *, colors, width: int = 1, dash: int = 6) -> None:
  """Outlines integer `rect` (x1, y1, x2, y2 inclusive) inward by `width` pixels in dashes cycling `colors`.

  A `None` in `colors` leaves a gap (e.g. `(red, None)` is red dashes); `(white, black)` is visible everywhere.
  """
  x1, y1, x2, y2 = (int(v) for v in rect)
  x2, y2 = max(x1, x2), max(y1, y2)
  _dashed_line(draw, (x1, y1), (x2, y1), colors=colors, width=width, dash=dash)
  _dashed_line(draw, (x1, y2 - width + 1), (x2, y2 - width + 1), colors=colors, width=width, dash=dash)
  _dashed_line(draw, (x1, y1), (x1, y2), colors=colors, width=width, dash=dash)
  _dashed_line(draw, (x2 - width + 1, y1), (x2 - width + 1, y2), colors=colors, width=width, dash=dash)


def _label_name(label: int, class_names: Sequence[str] | None) -> str:
  return class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)


def font_size_for(display_short_side: float) -> int:
  """Returns the label font size in pixels for a picture whose short side is `display_short_side` (13 at 512)."""
  return int(max(11, round(display_short_side / 40)))


def draw_detections(image, boxes, *, scores=None, classes=None, valid=None, class_names: Sequence[str] | None = None,
                    false_positive=None, gt_boxes=None, gt_labels=None, gt_valid=None, missed=None,
                    min_side: int = 512, scale: float | None = None) -> np.ndarray:
  """Returns a uint8 `[round(H*s), round(W*s), 3]` picture of `image` with detections and ground truth drawn on it.

  The scale `s` is `display_scale(H, W, min_side=min_side, scale=scale)`; a box edge at image x is drawn from
  display column `round(x * s)` (left, top) or ending at column `round(x * s) - 1` (right, bottom), inward.

  Args:
    image: `[H, W, 3]` uint8 (or float in 0..255) image the boxes refer to.
    boxes: `[K, 4]` xyxy pixels of `image` (one image's slice of `Detections.boxes`, mapped to its pixels).
    scores, classes, valid: `[K]` of the same `Detections` slice; `valid` (and a score threshold, folded into it
      by the caller) selects the detections drawn. Solid boxes in `class_color(class)`, captioned "name 0.87".
    false_positive: `[K]` bool, detections crossed out with a red X (the caller's matching decides).
    gt_boxes, gt_labels, gt_valid: `[M, 4]`, `[M]`, `[M]` ground truth: thin black-and-white dashes just outside
      each box, so a perfect detection shows both lines side by side.
    missed: `[M]` bool, ground truth no detection matched: thicker red dashes and a red caption with the class.
  """
  image = _to_uint8(image)
  h, w = image.shape[:2]
  s = display_scale(h, w, min_side=min_side, scale=scale)
  size = (max(1, round(w * s)), max(1, round(h * s)))
  canvas = Image.fromarray(image).convert("RGB").resize(size, Image.Resampling.BILINEAR)
  draw = ImageDraw.Draw(canvas)
  short = min(size)
  line = max(2, round(short / 170))
  font = load_font(font_size_for(short))

  def select(values, n, default):
    return np.full(n, default) if values is None else np.asarray(values).reshape(n)

  def to_display(b):
    b = np.asarray(b, np.float32).reshape(-1, 4)
    ok = np.all(np.isfinite(b), axis=1)
    return np.rint(np.where(ok[:, None], b, 0) * s).astype(np.int64), ok

  det, det_ok = to_display(boxes)
  k = len(det)
  det_keep = np.nonzero(select(valid, k, True).astype(bool) & det_ok & (det[:, 2] > det[:, 0]) &
                        (det[:, 3] > det[:, 1]))[0]
  det_scores = select(scores, k, np.nan).astype(np.float64)
  det_classes = select(classes, k, 0).astype(np.int64)
  det_fp = select(false_positive, k, False).astype(bool)
  gt, gt_ok = to_display(np.zeros((0, 4)) if gt_boxes is None else gt_boxes)
  m = len(gt)
  gt_keep = np.nonzero(select(gt_valid, m, True).astype(bool) & gt_ok)[0]
  gt_missed = select(missed, m, False).astype(bool)
  gt_classes = select(gt_labels, m, -1).astype(np.int64)

  thin = max(1, line - 1)
  for j in gt_keep:  # outside its box, so that a detection of exactly that box leaves it visible
    x1, y1, x2, y2 = gt[j]
    if gt_missed[j]:
      dashed_rectangle(draw, (x1 - line, y1 - line, x2 - 1 + line, y2 - 1 + line), colors=(MARK_COLOR, None),
                       width=line, dash=3 * line)
    else:
      dashed_rectangle(draw, (x1 - thin, y1 - thin, x2 - 1 + thin, y2 - 1 + thin), colors=GT_COLORS, width=thin,
                       dash=4 * line)
  order = det_keep[np.argsort(-np.nan_to_num(det_scores[det_keep], nan=-1.0), kind="stable")]
  for i in order[::-1]:  # the highest scores are drawn last, on top
    x1, y1, x2, y2 = det[i]
    draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=class_color(det_classes[i]), width=line)
  for i in order:
    if det_fp[i]:
      x1, y1, x2, y2 = det[i]
      draw.line([x1, y1, x2 - 1, y2 - 1], fill=MARK_COLOR, width=line)
      draw.line([x1, y2 - 1, x2 - 1, y1], fill=MARK_COLOR, width=line)

  texts, colors, anchors = [], [], []
  for i in order:
    name = _label_name(int(det_classes[i]), class_names)
    texts.append(name if np.isnan(det_scores[i]) else f"{name} {det_scores[i]:.2f}")
    colors.append(class_color(det_classes[i]))
    anchors.append(det[i])
  for j in gt_keep[gt_missed[gt_keep]]:
    texts.append("missed" if gt_classes[j] < 0 else f"missed {_label_name(int(gt_classes[j]), class_names)}")
    colors.append(MARK_COLOR)
    anchors.append(gt[j] + np.array([-line, -line, line, line]))
  _draw_labels(draw, texts, colors, np.asarray(anchors).reshape(-1, 4), font=font, bounds=size,
               obstacles=gt[gt_keep])
  return np.asarray(canvas)


def _text_box(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int, int, int]:
  """(left offset, top offset, width, height) of `text`, the height of the font's full line (so labels align)."""
  left, _, right, _ = draw.textbbox((0, 0), text, font=font)
  _, top, _, bottom = draw.textbbox((0, 0), "Ag|0", font=font)
  return left, top, right - left, bottom - top


def _draw_labels(draw, texts, colors, anchors, *, font, bounds, obstacles) -> np.ndarray:
  pad = 2
  boxes = [_text_box(draw, t, font) for t in texts]
  sizes = [(w + 2 * pad, h + 2 * pad) for _, _, w, h in boxes]
  rects = place_labels(sizes, anchors, bounds=bounds, obstacles=obstacles)
  for text, color, (left, top, _, _), rect in zip(texts, colors, boxes, rects):
    x1, y1, x2, y2 = (int(v) for v in rect)
    draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
    draw.text((x1 + pad - left, y1 + pad - top), text, fill=_text_color(color), font=font)
  return rects


def legend_strip(width: int, *, title: str, entries: Sequence[tuple[str, Sequence[int] | None, str]] = (),
                 font_size: int = 14) -> np.ndarray:
  """Returns a uint8 `[h, width, 3]` dark strip: `title` on the first line, then the legend `entries`, wrapped.

  Each entry is `(kind, color, text)` with kind "box" (a solid outline in `color`), "fill" (a swatch),
  "dashed" (ground-truth dashes), "missed" (red dashes) or "cross" (the red X of a false positive).
  """
  font = load_font(font_size)
  scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  left, top, _, th = _text_box(scratch, title, font)
  swatch, gap, margin = th, max(6, font_size // 2), max(4, font_size // 3)
  lines: list[list[tuple[int, tuple]]] = [[]]
  x = margin
  for entry in entries:
    _, _, tw, _ = _text_box(scratch, entry[2], font)
    need = swatch + 4 + tw + 2 * gap
    if lines[-1] and x + need > width - margin:
      lines.append([])
      x = margin
    lines[-1].append((x, entry))
    x += need
  row = th + margin
  height = margin + row * (1 + (len(lines) if entries else 0))
  canvas = Image.new("RGB", (width, height), STRIP_BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  draw.text((margin - left, margin - top), title, fill=(255, 255, 255), font=font)
  for r, items in enumerate(lines if entries else []):
    y = margin + row * (r + 1)
    for x, (kind, color, text) in items:
      _draw_swatch(draw, kind, color, (x, y, x + swatch - 1, y + swatch - 1), line=max(2, font_size // 6))
      l, t, _, _ = _text_box(draw, text, font)
      draw.text((x + swatch + 4 - l, y - t), text, fill=(255, 255, 255), font=font)
  return np.asarray(canvas)


def _draw_swatch(draw: ImageDraw.ImageDraw, kind: str, color, rect, *, line: int) -> None:
  x1, y1, x2, y2 = rect
  if kind == "fill":
    draw.rectangle(rect, fill=tuple(color))
  elif kind == "box":
    draw.rectangle(rect, outline=tuple(color), width=line)
  elif kind == "dashed":
    dashed_rectangle(draw, rect, colors=GT_COLORS, width=max(1, line - 1), dash=max(3, (x2 - x1) // 3))
  elif kind == "missed":
    dashed_rectangle(draw, rect, colors=(MARK_COLOR, None), width=line, dash=max(3, (x2 - x1) // 4))
  elif kind == "cross":
    draw.rectangle(rect, outline=(200, 200, 200), width=1)
    draw.line([x1, y1, x2, y2], fill=MARK_COLOR, width=line)
    draw.line([x1, y2, x2, y1], fill=MARK_COLOR, width=line)
  else:
    raise ValueError(f"legend entry kind must be box, fill, dashed, missed or cross, got {kind!r}")


def stack(top, bottom, *, background=STRIP_BACKGROUND) -> np.ndarray:
  """Returns `top` above `bottom` (uint8 `[h, w, 3]` each), the narrower one padded on the right."""
  width = max(top.shape[1], bottom.shape[1])
  out = np.empty((top.shape[0] + bottom.shape[0], width, 3), np.uint8)
  out[...] = background
  out[:top.shape[0], :top.shape[1]] = top
  out[top.shape[0]:, :bottom.shape[1]] = bottom
  return out


def tile(images: Sequence[np.ndarray], *, columns: int = 4, gap: int = 6, background=STRIP_BACKGROUND) -> np.ndarray:
  """Returns the uint8 images `[h_i, w_i, 3]` laid out row by row, `columns` per row, each at its cell's top-left.

  A column is as wide as its widest image and a row as tall as its tallest, so images of any size fit unscaled.
  """
  if not images:
    raise ValueError("tile needs at least one image")
  columns = max(1, min(columns, len(images)))
  rows = -(-len(images) // columns)
  widths = [max(im.shape[1] for im in images[c::columns]) for c in range(columns)]
  heights = [max(im.shape[0] for im in images[r * columns:(r + 1) * columns]) for r in range(rows)]
  out = np.empty((sum(heights) + gap * (rows + 1), sum(widths) + gap * (columns + 1), 3), np.uint8)
  out[...] = background
  for n, im in enumerate(images):
    r, c = divmod(n, columns)
    y = gap + sum(heights[:r]) + gap * r
    x = gap + sum(widths[:c]) + gap * c
    out[y:y + im.shape[0], x:x + im.shape[1]] = im
  return out


def save_png(path: str | os.PathLike, image) -> str:
  """Writes uint8 `[H, W, 3]` `image` to `path` as PNG (creating its folder) and returns the path."""
  path = os.fspath(path)
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  Image.fromarray(np.asarray(image, np.uint8)).save(path, format="PNG")
  return path


def encode_png(image, *, compress_level: int = 3) -> bytes:
  """Returns the PNG file bytes of uint8 `[H, W, 3]` `image` (what a TensorBoard image summary holds).

  Level 3 rather than zlib's 6: a third of the time for files about a tenth larger (0.2 s vs 0.55 s, 2.0 vs 1.8 MB
  for an 8-picture grid of textured 512 px images).
  """
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG", compress_level=compress_level)
  return buffer.getvalue()
