"""How the file readers treat bad input: raise an error naming the file and entry, or skip it, count it, report it.

The rules every reader (`CocoSource`, `VocSource`) follows:
  - malformed JSON / XML, a missing or undecodable image, a box with width or height <= 0 (or not finite), a box
    entirely outside its image, an unknown category: with `on_error="raise"` a `BadInputError` naming the file and the
    annotation (id, or object index for VOC); with `on_error="skip"` the annotation — or, for a bad image or file,
    the whole image — is left out and counted in `source.skipped` by reason, and a summary is logged when the
    reader has read its annotations;
  - a box partly outside its image is clipped to the image and kept, and counted in `source.clipped` (not an error:
    real annotation files have them, e.g. COCO boxes that overrun the border by a fraction of a pixel);
  - an image without boxes is a valid example.
"""

from __future__ import annotations

import abc
import collections
import math
from typing import Literal

import numpy as np
from absl import logging
from PIL import Image

from jaxdet.data.source import DetectionSource, Example

OnError = Literal["raise", "skip"]


class BadInputError(ValueError):
  """A data file or an entry in it that a reader cannot use; the message names the file and the entry."""


class ErrorPolicy:
  """Raises on bad input (`on_error="raise"`) or counts what was skipped (`"skip"`), and logs a summary.

  Attributes:
    skipped: number of skipped annotations / images by reason.
    clipped: number of boxes clipped to their image.
  """

  def __init__(self, on_error: OnError, *, reader: str):
    if on_error not in ("raise", "skip"):
      raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
    self.on_error = on_error
    self.reader = reader
    self.skipped: collections.Counter[str] = collections.Counter()
    self.clipped = 0

  def bad(self, reason: str, message: str, *, after_report: bool = False) -> None:
    """Raises `BadInputError(message)`, or (skip mode) counts one `reason` and logs the message.

    The message is logged at debug level while reading (the summary follows), as a warning `after_report`.
    """
    if self.on_error == "raise":
      raise BadInputError(message)
    self.skipped[reason] += 1
    (logging.warning if after_report else logging.debug)("%s: skipped: %s", self.reader, message)

  def report(self) -> None:
    """Logs what was skipped and clipped (a warning when anything was skipped)."""
    if self.skipped:
      counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
      logging.warning("%s: skipped %s; clipped %d boxes to their image.", self.reader, counts, self.clipped)
    elif self.clipped:
      logging.info("%s: clipped %d boxes to their image.", self.reader, self.clipped)


class FileSource(DetectionSource):
  """A source read from annotation files and image files, under an `ErrorPolicy` (COCO folders, Pascal VOC).

  Subclasses fill `self._images` (one entry per served image) and `self._policy`, and define `_example(i)`, which
  decodes image i and raises `BadInputError` when it cannot. An image that only turns out undecodable when served
  raises in "raise" mode; in "skip" mode it is counted and the next decodable image is served in its place.
  """

  _images: list
  _policy: ErrorPolicy

  @abc.abstractmethod
  def _example(self, index: int) -> Example:
    """Returns example `index`, decoding its image; raises `BadInputError` naming the file when it cannot."""

  def _nothing_decodable(self) -> str:
    return f"{self._policy.reader}: no image could be decoded"

  @property
  def skipped(self) -> collections.Counter[str]:
    """Skipped annotations / images by reason."""
    return self._policy.skipped

  @property
  def clipped(self) -> int:
    """Boxes clipped to their image."""
    return self._policy.clipped

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index: int) -> Example:
    index = range(len(self))[index]  # negative indices, and IndexError past the end
    for offset in range(len(self)):
      try:
        return self._example((index + offset) % len(self))
      except BadInputError as e:
        self._policy.bad("undecodable image", str(e), after_report=True)  # raises in "raise" mode
    raise BadInputError(self._nothing_decodable())


def check_box(box, *, width: float, height: float) -> tuple[str | None, tuple[float, ...], bool]:
  """Returns `(problem, box, clipped)` for an xyxy pixel box: problem is None for a usable box, else why it is not.

  A box partly outside `[0, width] x [0, height]` comes back clipped with `clipped=True`; one with width or height
  <= 0, non-finite coordinates, or no overlap with the image is a problem.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
    return "non-finite box", (x1, y1, x2, y2), False
  if x2 <= x1 or y2 <= y1:
    return "box with width or height <= 0", (x1, y1, x2, y2), False
  if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
    return "box outside the image", (x1, y1, x2, y2), False
  clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
  return None, clipped, clipped != (x1, y1, x2, y2)


def read_image_size(path: str) -> tuple[int, int]:
  """Returns `(height, width)` from the image file's header (no decoding); raises OSError if it is not an image."""
  with Image.open(path) as image:
    return image.height, image.width


def load_image(path: str) -> np.ndarray:
  """Returns the image at `path` decoded as uint8 `[H, W, 3]` RGB (grey, palette and CMYK converted).

  Pixels are as stored: EXIF orientation is not applied (detectron2's reader applies it), so boxes are read in the
  stored image's frame.
  """
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))
