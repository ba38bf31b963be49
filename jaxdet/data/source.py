"""The example layout every jaxdet reader produces, and the `DetectionSource` interface the loader reads.

One example (NumPy, one image) — what `source[i]` returns and every transform takes and returns:

  image       uint8 `[H, W, 3]` RGB.
  boxes       float32 `[N, 4]` xyxy pixels in the current image's frame (continuous, no "+1").
  labels      int32 `[N]` contiguous class index in `[0, num_classes)`.
  crowd       bool `[N]` COCO `iscrowd` regions (matched many times in evaluation, never trained as background).
  difficult   bool `[N]` VOC `difficult` objects (ignored by VOC evaluation).
  image_id    int64 scalar: the dataset's own image id (what COCO results and `coco_ground_truth()` use).
  orig_size   int32 `[2]` (height, width) of the image as stored.
  frame       float32 `[4]` (sx, sy, tx, ty): a point (x, y) of the stored image is at (x * sx + tx, y * sy + ty)
              in the current image. Readers set (1, 1, 0, 0); geometric transforms compose into it, so that
              detections on a resized / letterboxed network input map back to stored-image pixels for evaluation.

A batch (what the loader yields and `Detector.assign` reads) stacks examples and pads the per-box fields to
`max_boxes` with a bool `valid [B, max_boxes]` mask: `image [B, H, W, 3]` uint8, `boxes [B, M, 4]`,
`labels [B, M]`, `crowd [B, M]`, `difficult [B, M]`, `valid [B, M]`, `image_id [B]`, `orig_size [B, 2]`,
`frame [B, 4]`, plus `example_valid [B]` (False on the padding that fills the last evaluation batch) and
`num_truncated [B]` (objects beyond `max_boxes`, dropped and counted). Padded slots are zeros and `valid=False`;
no sentinel values. Images stay uint8 up to the device; the model normalises them.
"""

from __future__ import annotations

import abc
from typing import Any, Mapping, Sequence

import numpy as np

Example = dict[str, np.ndarray]

EXAMPLE_KEYS = ("image", "boxes", "labels", "crowd", "difficult", "image_id", "orig_size", "frame")


def make_example(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, *, image_id: int,
                 crowd: np.ndarray | None = None, difficult: np.ndarray | None = None) -> Example:
  """Returns an example in the layout above from an image and its xyxy boxes and contiguous labels."""
  image = np.asarray(image, np.uint8)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  n = boxes.shape[0]
  return {
      "image": image,
      "boxes": boxes,
      "labels": np.asarray(labels, np.int32).reshape(n),
      "crowd": np.zeros(n, bool) if crowd is None else np.asarray(crowd, bool).reshape(n),
      "difficult": np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool).reshape(n),
      "image_id": np.int64(image_id),
      "orig_size": np.asarray(image.shape[:2], np.int32),
      "frame": np.array([1.0, 1.0, 0.0, 0.0], np.float32),
  }


def to_original_frame(boxes: np.ndarray, frame: np.ndarray) -> np.ndarray:
  """Returns `boxes [..., 4]` xyxy mapped from the current frame back to stored-image pixels (inverse of `frame`).

  `frame [..., 4]` broadcasts against the leading axes of `boxes` after adding a box axis, e.g. boxes `[B, K, 4]`
  with frame `[B, 4]`. Works on NumPy and JAX arrays alike.
  """
  frame = frame[..., None, :] if boxes.ndim == frame.ndim + 1 else frame
  sx, sy, tx, ty = frame[..., 0:1], frame[..., 1:2], frame[..., 2:3], frame[..., 3:4]
  x1, y1, x2, y2 = boxes[..., 0:1], boxes[..., 1:2], boxes[..., 2:3], boxes[..., 3:4]
  xs = ((x1 - tx) / sx, (x2 - tx) / sx)
  ys = ((y1 - ty) / sy, (y2 - ty) / sy)
  lib = np if isinstance(boxes, np.ndarray) else _jnp()
  return lib.concatenate([lib.minimum(*xs), lib.minimum(*ys), lib.maximum(*xs), lib.maximum(*ys)], axis=-1)


def _jnp():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp


class DetectionSource(abc.ABC):
  """Random access to the examples of one split, plus what evaluation needs to know about them.

  Subclasses: the embedded `shapes` set, a COCO-format folder, Pascal VOC, tfds' `coco/2017` and `voc/2007`.
  `grain` reads a source directly (`__len__` + `__getitem__`).
  """

  @abc.abstractmethod
  def __len__(self) -> int:
    """Number of examples in the split."""

  @abc.abstractmethod
  def __getitem__(self, index: int) -> Example:
    """Returns example `index` in the layout of this module's docstring."""

  @property
  @abc.abstractmethod
  def class_names(self) -> Sequence[str]:
    """Name of each contiguous class index."""

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def category_ids(self) -> Sequence[int]:
    """The dataset's category id of each contiguous class index (COCO ids are not contiguous). Default 1..C."""
    return list(range(1, self.num_classes + 1))

  def coco_ground_truth(self) -> Mapping[str, Any]:
    """Returns the split's ground truth as a COCO dict (`images`, `annotations`, `categories`) in stored pixels.

    The default walks the examples (decoding every image); sources that hold annotations separately override it.
    Annotation `area` is the box area unless the source knows better (COCO's segmentation area).
    """
    images, annotations = [], []
    for i in range(len(self)):
      ex = self[i]
      h, w = (int(v) for v in ex["orig_size"])
      image_id = int(ex["image_id"])
      images.append({"id": image_id, "height": h, "width": w})
      for box, label, crowd in zip(ex["boxes"].tolist(), ex["labels"].tolist(), ex["crowd"].tolist()):
        x1, y1, x2, y2 = box
        annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                            "category_id": int(self.category_ids[label]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
    categories = [{"id": int(c), "name": n} for c, n in zip(self.category_ids, self.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


class ListSource(DetectionSource):
  """A source over examples already in memory (tests, small user data sets, generated scenes)."""

  def __init__(self, examples: Sequence[Example], class_names: Sequence[str]):
    self._examples = list(examples)
    self._class_names = list(class_names)

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> Example:
    return {k: np.copy(v) for k, v in self._examples[index].items()}

  @property
  def class_names(self) -> Sequence[str]:
    return self._class_names


class WrappedSource(DetectionSource):
  """Base of a source that changes or remembers the examples of `source` (`__getitem__`) and delegates the rest:
  its length, class names, category ids and COCO ground truth."""

  def __init__(self, source: DetectionSource):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  @property
  def class_names(self) -> Sequence[str]:
    return self.source.class_names

  @property
  def category_ids(self) -> Sequence[int]:
    return self.source.category_ids

  def coco_ground_truth(self) -> Mapping[str, Any]:
    return self.source.coco_ground_truth()
