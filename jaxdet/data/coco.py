"""A COCO-format folder (instances JSON + images) as a `DetectionSource`, and the exporter that writes one.

`CocoSource` reads what `pycocotools.coco.COCO` reads: `images` (id, file_name, optional width / height),
`annotations` (id, image_id, category_id, bbox `[x, y, w, h]` pixels, area, iscrowd) and `categories`. Category ids
map to contiguous labels in increasing id order (COCO's 80 ids span 1..90). `iscrowd` becomes the `crowd` flag; an
annotation's optional `difficult` field (written by `export_coco` for VOC data) becomes `difficult`.
Bad input follows `jaxdet.data.bad_input`: errors name the JSON file and the annotation id, or are skipped and
counted with `on_error="skip"`; boxes partly outside their image are clipped and kept.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from jaxdet.data.bad_input import (BadInputError, ErrorPolicy, FileSource, OnError, check_box, load_image,
                                   read_image_size)
from jaxdet.data.source import DetectionSource, Example, make_example


def _load_json(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise BadInputError(f"{path}: malformed JSON: {e}") from e
  if not isinstance(data, dict):
    raise BadInputError(f"{path}: expected a JSON object with images, annotations, categories")
  for key in ("images", "annotations", "categories"):
    if not isinstance(data.get(key), list):
      raise BadInputError(f"{path}: missing or non-list {key!r}")
  return data


class CocoSource(FileSource):
  """Examples of a COCO-format folder: `annotation_file` (instances JSON) and `image_dir` (its `file_name`s).

  Annotations are validated when the source is made (images are only opened to read their size from the header;
  `check_images=False` trusts the JSON's width / height instead). An image that fails to decode later, in
  `__getitem__`, raises `BadInputError`; with `on_error="skip"` it is counted and the next image is served instead.

  Attributes:
    skipped: `collections.Counter` of skipped annotations and images by reason.
    clipped: number of boxes clipped to their image.
  """

  def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike, *,
               on_error: OnError = "raise", check_images: bool = True):
    self.annotation_file = os.fspath(annotation_file)
    self.image_dir = os.fspath(image_dir)
    self._policy = ErrorPolicy(on_error, reader=f"CocoSource({self.annotation_file})")
    data = _load_json(self.annotation_file)
    self._data = data
    categories = sorted(data["categories"], key=lambda c: c["id"])
    self._category_ids = [int(c["id"]) for c in categories]
    self._class_names = [str(c.get("name", c["id"])) for c in categories]
    label_of = {cid: i for i, cid in enumerate(self._category_ids)}
    self._images = self._read_images(data["images"], check_images)
    self._kept_annotations = self._read_annotations(data["annotations"], label_of)
    self._policy.report()

  def _where(self, what: str) -> str:
    return f"{self.annotation_file}: {what}"

  def _read_images(self, entries: Sequence[Mapping[str, Any]], check_images: bool) -> list[dict[str, Any]]:
    images = []
    for entry in entries:
      if "id" not in entry or "file_name" not in entry:
        self._policy.bad("malformed image entry", self._where(f"image entry {dict(entry)} lacks id or file_name"))
        continue
      image_id, path = int(entry["id"]), os.path.join(self.image_dir, entry["file_name"])
      size = (entry.get("height"), entry.get("width"))
      if check_images:
        try:
          stored = read_image_size(path)
        except OSError as e:  # missing file, or not an image PIL can read
          self._policy.bad("missing or unreadable image", self._where(f"image id {image_id}: {path}: {e}"))
          continue
        if None not in size and tuple(size) != stored:
          self._policy.bad("image size differs from the JSON", self._where(
              f"image id {image_id}: {path} is {stored[0]}x{stored[1]} (HxW), the JSON says {size[0]}x{size[1]}"))
          continue
        size = stored
      elif None in size:
        self._policy.bad("malformed image entry", self._where(f"image id {image_id} lacks height / width"))
        continue
      images.append({"id": image_id, "path": path, "height": int(size[0]), "width": int(size[1]), "boxes": [],
                     "labels": [], "crowd": [], "difficult": []})
    return images

  def _read_annotations(self, entries: Sequence[Mapping[str, Any]], label_of: Mapping[int, int]) -> list[int]:
    """Attaches valid annotations to their images; returns the positions in `entries` of those kept."""
    by_id = {im["id"]: im for im in self._images}
    known = {int(im["id"]) for im in self._data["images"] if "id" in im}
    kept = []
    for position, ann in enumerate(entries):
      where = self._where(f"annotation id {ann.get('id')} (image id {ann.get('image_id')})")
      image = by_id.get(ann.get("image_id"))
      if image is None:
        if ann.get("image_id") in known:  # its image was skipped
          self._policy.skipped["annotation of a skipped image"] += 1
        else:
          self._policy.bad("unknown image id", f"{where}: no image with this id")
        continue
      if ann.get("category_id") not in label_of:
        self._policy.bad("unknown category id", f"{where}: unknown category id {ann.get('category_id')}")
        continue
      bbox = ann.get("bbox")
      if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        self._policy.bad("malformed bbox", f"{where}: bbox {bbox!r} is not 4 numbers [x, y, w, h]")
        continue
      x, y, w, h = (float(v) for v in bbox)
      problem, box, clipped = check_box((x, y, x + w, y + h), width=image["width"], height=image["height"])
      if problem:
        self._policy.bad(problem, f"{where}: {problem}: bbox {bbox} in a {image['width']}x{image['height']} (WxH) "
                         "image")
        continue
      self._policy.clipped += int(clipped)
      image["boxes"].append(box)
      image["labels"].append(label_of[ann["category_id"]])
      image["crowd"].append(bool(ann.get("iscrowd", 0)))
      image["difficult"].append(bool(ann.get("difficult", 0)))
      kept.append(position)
    return kept

  def _example(self, index: int) -> Example:
    image = self._images[index]
    try:
      pixels = load_image(image["path"])
    except OSError as e:
      raise BadInputError(self._where(f"image id {image['id']}: cannot decode {image['path']}: {e}")) from e
    if pixels.shape[:2] != (image["height"], image["width"]):
      raise BadInputError(self._where(f"image id {image['id']}: {image['path']} decodes to {pixels.shape[:2]} "
                                      f"(HxW), expected {(image['height'], image['width'])}"))
    return make_example(pixels, np.asarray(image["boxes"], np.float32).reshape(-1, 4), image["labels"],
                        image_id=image["id"], crowd=image["crowd"], difficult=image["difficult"])

  def _nothing_decodable(self) -> str:
    return self._where("no image could be decoded")

  @property
  def class_names(self) -> Sequence[str]:
    return self._class_names

  @property
  def category_ids(self) -> Sequence[int]:
    return self._category_ids

  def coco_ground_truth(self) -> Mapping[str, Any]:
    """Returns the JSON's own dict, less the images and annotations skipped (boxes as written, not clipped)."""
    served = {im["id"] for im in self._images}
    ground_truth = {k: v for k, v in self._data.items() if k not in ("images", "annotations")}
    ground_truth["images"] = [im for im in self._data["images"] if im.get("id") in served]
    ground_truth["annotations"] = [self._data["annotations"][p] for p in self._kept_annotations]
    return copy.deepcopy(ground_truth)


def export_coco(source: DetectionSource, out_dir: str | os.PathLike, *, split_name: str) -> str:
  """Writes `source` as a COCO-format folder and returns the path of its annotation file.

  Layout: `out_dir/annotations/instances_<split_name>.json` and `out_dir/images/<split_name>/<image_id>.png`
  (lossless), readable by `CocoSource(json, out_dir/images/<split_name>)` and `pycocotools.coco.COCO(json)`.
  Annotations are the source's `coco_ground_truth()` (so areas, ids and extra fields such as VOC's `difficult` are
  kept); images are each example's pixels as the source serves them.
  """
  ground_truth = source.coco_ground_truth()
  entries = {im["id"]: im for im in ground_truth["images"]}
  image_dir = os.path.join(os.fspath(out_dir), "images", split_name)
  annotation_dir = os.path.join(os.fspath(out_dir), "annotations")
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(annotation_dir, exist_ok=True)
  images = []
  for index in range(len(source)):
    example = source[index]
    image_id = int(example["image_id"])
    file_name = f"{image_id}.png"
    Image.fromarray(example["image"]).save(os.path.join(image_dir, file_name), compress_level=1)
    height, width = (int(v) for v in example["image"].shape[:2])
    images.append(dict(entries.get(image_id, {}), id=image_id, file_name=file_name, height=height, width=width))
  path = os.path.join(annotation_dir, f"instances_{split_name}.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"images": images, "annotations": list(ground_truth["annotations"]),
               "categories": list(ground_truth["categories"])}, f)
  return path
