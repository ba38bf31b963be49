"""tensorflow-datasets' registered `coco/2017` and `voc/2007` (also `coco/2014`, `voc/2012`) as `DetectionSource`s.

The user prepares the set once in the array_record format that random access needs, e.g.
`tfds build coco/2017 --file_format=array_record` (preparing needs TensorFlow; reading does not): `TfdsSource` opens
the prepared copy from its files, so reading works without TensorFlow, and falls back to tfds' builder code.

Conversion: tfds stores `bbox` as normalised `[ymin, xmin, ymax, xmax]`; boxes become xyxy pixels of the decoded
image. COCO: `objects/label` indexes the 80 categories in increasing id order (`COCO_CATEGORY_IDS`), `is_crowd` is
the crowd flag, `image/id` the image id, `objects/area` the annotation area. VOC: tfds keeps VOC's 1-based inclusive
numbers divided by the image size, so boxes are `(xmin * W - 1, ymin * H - 1, xmax * W, ymax * H)` as in
`VocSource` (see `jaxdet.data.voc`); `is_difficult` is the difficult flag and the image id comes from
`image/filename` as in `VocSource`. Pixel coordinates are rounded to 1/1000 px, below which they are float32
normalisation noise (so integer VOC boxes and COCO's 2-decimal boxes come back exactly), and clipped to the image.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxdet.data.source import DetectionSource, Example, make_example
from jaxdet.data.voc import voc_image_id

# COCO's category ids of its 80 detection classes, in increasing order: tfds' `objects/label` indexes this list.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)


def _load_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Returns the builder of the prepared copy in `data_dir` (no TensorFlow needed), else tfds' builder code."""
  try:
    return tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    return tfds.builder(name, data_dir=data_dir)


def pixel_boxes(bbox: np.ndarray, *, height: int, width: int, one_based: bool) -> np.ndarray:
  """Returns float32 `[N, 4]` xyxy pixels from tfds' normalised `[N, 4]` `[ymin, xmin, ymax, xmax]`.

  Rounded to 1/1000 px and clipped to the image (see the module docstring).

  `one_based`: the normalised numbers are VOC's 1-based inclusive indices, so x1 and y1 move back by one pixel.
  """
  bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
  boxes = bbox[:, [1, 0, 3, 2]] * np.array([width, height, width, height], np.float64)
  if one_based:
    boxes[:, :2] -= 1.0
  boxes = np.clip(np.round(boxes, 3), 0.0, np.array([width, height, width, height], np.float64))
  return boxes.astype(np.float32)


class TfdsSource(DetectionSource):
  """Split `split` of tfds' prepared `coco/<year>` or `voc/<year>` (array_record) under `data_dir`."""

  def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike | None = None):
    self.name = name
    self.split = split
    family = name.split("/")[0].split(":")[0]
    if family not in ("coco", "voc") or "panoptic" in name:
      raise ValueError(f"TfdsSource reads tfds' coco/<year> and voc/<year> detection sets, not {name!r}")
    self._voc = family == "voc"
    builder = _load_builder(name, None if data_dir is None else os.fspath(data_dir))
    labels = builder.info.features["objects"]["label"]
    self._class_names = list(labels.names)
    if not self._voc and len(self._class_names) != len(COCO_CATEGORY_IDS):
      raise ValueError(f"{name}: expected {len(COCO_CATEGORY_IDS)} COCO classes, the builder has "
                       f"{len(self._class_names)}")
    self._records = builder.as_data_source(split=split)
    # The same records with the image left encoded: coco_ground_truth() reads sizes from the image header only.
    self._encoded = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})

  def __len__(self) -> int:
    return len(self._records)

  def _image_id(self, record: Mapping[str, Any], index: int) -> int:
    if not self._voc:
      return int(record["image/id"])
    filename = record["image/filename"]
    filename = filename.decode() if isinstance(filename, bytes) else str(filename)
    return voc_image_id(os.path.splitext(os.path.basename(filename))[0], index)

  def _annotations(self, record: Mapping[str, Any], *, height: int, width: int) -> dict[str, np.ndarray]:
    objects = record["objects"]
    n = len(objects["label"])
    flag = "is_difficult" if self._voc else "is_crowd"
    return {"boxes": pixel_boxes(objects["bbox"], height=height, width=width, one_based=self._voc),
            "labels": np.asarray(objects["label"], np.int32).reshape(n),
            "flags": np.asarray(objects[flag], bool).reshape(n)}

  def __getitem__(self, index: int) -> Example:
    index = range(len(self))[index]
    record = self._records[index]
    image = np.asarray(record["image"], np.uint8)
    if image.ndim == 2 or image.shape[-1] == 1:  # grey images stay grey in tfds
      image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
    ann = self._annotations(record, height=image.shape[0], width=image.shape[1])
    flags = {"difficult": ann["flags"]} if self._voc else {"crowd": ann["flags"]}
    return make_example(image, ann["boxes"], ann["labels"], image_id=self._image_id(record, index), **flags)

  @property
  def class_names(self) -> Sequence[str]:
    return self._class_names

  @property
  def category_ids(self) -> Sequence[int]:
    return list(range(1, len(self._class_names) + 1)) if self._voc else list(COCO_CATEGORY_IDS)

  def coco_ground_truth(self) -> Mapping[str, Any]:
    """Returns the split as a COCO dict (COCO: tfds' `area`; VOC: box area and a `difficult` field), no decoding."""
    images, annotations = [], []
    for index in range(len(self)):
      record = self._encoded[index]
      with Image.open(io.BytesIO(record["image"])) as header:
        width, height = header.size
      image_id = self._image_id(record, index)
      images.append({"id": image_id, "height": height, "width": width})
      ann = self._annotations(record, height=height, width=width)
      boxes = ann["boxes"].astype(np.float64)
      if self._voc:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        ids = len(annotations) + 1 + np.arange(len(boxes))
      else:  # COCO's own annotation ids and areas (tfds stores the area truncated to an integer)
        areas, ids = np.asarray(record["objects"]["area"], np.float64), np.asarray(record["objects"]["id"])
      for box, label, flag, area, ann_id in zip(boxes.tolist(), ann["labels"].tolist(), ann["flags"].tolist(),
                                                areas.tolist(), ids.tolist()):
        x1, y1, x2, y2 = box
        entry = {"id": int(ann_id), "image_id": image_id, "category_id": self.category_ids[label],
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": 0 if self._voc else int(flag)}
        if self._voc:
          entry["difficult"] = int(flag)
        annotations.append(entry)
    categories = [{"id": int(c), "name": n} for c, n in zip(self.category_ids, self._class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
