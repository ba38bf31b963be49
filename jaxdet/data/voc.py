"""Pascal VOC (`Annotations/*.xml`, `ImageSets/Main/<split>.txt`, `JPEGImages/*.jpg`) as a `DetectionSource`.

Coordinates: VOC's `bndbox` holds 1-based, inclusive pixel indices (a box over the first pixel column is
xmin = xmax = 1). In jaxdet's continuous convention (pixel `(i, j)` covers `[j, j+1) x [i, i+1)`) that box is
`(xmin - 1, ymin - 1, xmax, ymax)`, as detectron2 reads VOC; its width is `xmax - xmin + 1`, the devkit's width.
`difficult` flags are kept (VOC evaluation ignores those objects); `truncated` and `pose` are not read.
Image ids are the file stem as an integer with underscores dropped (`000005` -> 5, `2008_000008` -> 2008000008),
or the 1-based position in the split list when a stem is not of that form.
Bad input follows `jaxdet.data.bad_input`: errors name the XML file and the object's position in it (VOC objects have
no ids), or are skipped and counted with `on_error="skip"`; boxes partly outside their image are clipped and kept.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any, Mapping, Sequence

import numpy as np

from jaxdet.data.bad_input import (BadInputError, ErrorPolicy, FileSource, OnError, check_box, load_image,
                                   read_image_size)
from jaxdet.data.source import Example, make_example

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def voc_image_id(stem: str, position: int) -> int:
  """Returns the integer id of image `stem` (digits with underscores dropped), else `position + 1`."""
  digits = stem.replace("_", "")
  return int(digits) if digits.isdigit() else position + 1


class VocSource(FileSource):
  """Examples of split `split` of a VOC folder `root` (or `root/VOC<year>` when `year` is given).

  Annotations are parsed when the source is made; images are opened only to read their size from the header. An image
  that fails to decode later, in `__getitem__`, raises `BadInputError`; with `on_error="skip"` it is counted and the
  next image is served instead.

  Attributes:
    skipped: `collections.Counter` of skipped objects and images by reason.
    clipped: number of boxes clipped to their image.
  """

  def __init__(self, root: str | os.PathLike, split: str, *, year: int | str | None = None,
               class_names: Sequence[str] = VOC_CLASSES, on_error: OnError = "raise"):
    root = os.fspath(root)
    self.root = os.path.join(root, f"VOC{year}") if year is not None else root
    self.split = split
    self._class_names = list(class_names)
    self._policy = ErrorPolicy(on_error, reader=f"VocSource({self.root}, {split})")
    list_file = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
    try:
      with open(list_file, encoding="utf-8") as f:
        stems = [line.split()[0] for line in f if line.strip()]
    except OSError as e:
      raise BadInputError(f"{list_file}: cannot read the split list: {e}") from e
    label_of = {name: i for i, name in enumerate(self._class_names)}
    self._images = []
    for position, stem in enumerate(stems):
      image = self._read_annotation(stem, label_of)
      if image is not None:
        image["id"] = voc_image_id(stem, position)
        self._images.append(image)
    self._policy.report()

  def _read_annotation(self, stem: str, label_of: Mapping[str, int]) -> dict[str, Any] | None:
    """Returns the parsed image entry of `stem`, or None when the image is skipped."""
    xml_path = os.path.join(self.root, "Annotations", f"{stem}.xml")
    image_path = os.path.join(self.root, "JPEGImages", f"{stem}.jpg")
    try:
      root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError) as e:
      self._policy.bad("missing or malformed XML", f"{xml_path}: cannot parse: {e}")
      return None
    try:
      height, width = read_image_size(image_path)
    except OSError as e:
      self._policy.bad("missing or unreadable image", f"{xml_path}: image {image_path}: {e}")
      return None
    entry = {"path": image_path, "height": height, "width": width, "boxes": [], "labels": [], "difficult": []}
    for k, obj in enumerate(root.iter("object")):
      where = f"{xml_path}: object {k}"
      name = (obj.findtext("name") or "").strip()
      if name not in label_of:
        self._policy.bad("unknown category", f"{where}: unknown category {name!r} (not in class_names)")
        continue
      try:
        xmin, ymin, xmax, ymax = (float(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
      except (AttributeError, TypeError, ValueError):
        self._policy.bad("malformed bndbox", f"{where}: bndbox lacks a numeric xmin, ymin, xmax or ymax")
        continue
      problem, box, clipped = check_box((xmin - 1, ymin - 1, xmax, ymax), width=width, height=height)
      if problem:
        self._policy.bad(problem, f"{where} ({name}): {problem}: bndbox ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) "
                         f"in a {width}x{height} (WxH) image")
        continue
      self._policy.clipped += int(clipped)
      entry["boxes"].append(box)
      entry["labels"].append(label_of[name])
      entry["difficult"].append((obj.findtext("difficult") or "0").strip() == "1")
    return entry

  def _example(self, index: int) -> Example:
    image = self._images[index]
    try:
      pixels = load_image(image["path"])
    except OSError as e:
      raise BadInputError(f"{image['path']}: cannot decode: {e}") from e
    return make_example(pixels, np.asarray(image["boxes"], np.float32).reshape(-1, 4), image["labels"],
                        image_id=image["id"], difficult=image["difficult"])

  def _nothing_decodable(self) -> str:
    return f"{self.root}: no image of split {self.split} could be decoded"

  @property
  def class_names(self) -> Sequence[str]:
    return self._class_names

  def coco_ground_truth(self) -> Mapping[str, Any]:
    """Returns the split as a COCO dict with a `difficult` field per annotation (area = box area), no decoding."""
    images, annotations = [], []
    for image in self._images:
      images.append({"id": image["id"], "height": image["height"], "width": image["width"],
                     "file_name": os.path.basename(image["path"])})
      for (x1, y1, x2, y2), label, difficult in zip(image["boxes"], image["labels"], image["difficult"]):
        annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": label + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                            "difficult": int(difficult)})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(self._class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
