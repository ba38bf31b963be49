"""COCO-format inputs as validated arrays: the ground-truth dict, a results list, a proposals list.

Every evaluator reads its input here, so bad input fails the same way everywhere: a `ValueError` that names the
offending entry (its position, and the entry itself), never a silently different number. What is checked:

- ground truth: `images`, `annotations`, `categories` lists; each image and category has an integer `id`; each
  annotation has integer `id` (unique, not 0), `image_id` and `category_id` that exist, a `bbox` of 4 finite numbers
  and a finite `area`. Boxes with w or h <= 0 are kept: pycocotools evaluates them (they can never be matched, so
  they count as missed objects) and so do we, giving its number.
- detections: integer `image_id` and `category_id` that exist in the ground truth (pycocotools asserts on the first
  and silently drops the second), a `bbox` of 4 finite numbers with w > 0 and h > 0, a finite `score`.
- proposals: the same without `category_id`.

The fast path converts whole columns with NumPy; only when a column does not convert cleanly is it scanned entry by
entry to name the culprit, so validation costs little on large, well-formed result sets.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def _require(entries: Sequence[Mapping[str, Any]], fields: Sequence[str], what: str) -> None:
  """Raises naming the first entry that is not a dict or lacks one of `fields`."""
  try:
    for field in fields:
      for entry in entries:
        entry[field]  # pylint: disable=pointless-statement
    return  # the common case: one cheap pass per field
  except (KeyError, TypeError, IndexError):
    pass
  for i, entry in enumerate(entries):
    if not isinstance(entry, Mapping):
      raise ValueError(f"{what} #{i} is not a dict: {entry!r}")
    missing = [f for f in fields if f not in entry]
    if missing:
      raise ValueError(f"{what} #{i} is missing field(s) {missing}: {dict(entry)}")


def _is_integer(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, np.integer)):
    return True
  return isinstance(value, (float, np.floating)) and float(value).is_integer()


def _ids(entries: Sequence[Mapping[str, Any]], field: str, what: str) -> np.ndarray:
  """int64 `[N]` of `entry[field]`; a float equal to an integer (e.g. 3.0 from a json writer) is accepted."""
  values = [e[field] for e in entries]
  column = np.asarray(values) if values else np.zeros((0,), np.int64)
  if column.ndim == 1 and column.dtype.kind in "iu":
    return column.astype(np.int64)
  for i, v in enumerate(values):
    if not _is_integer(v):
      raise ValueError(f"{what} #{i} has {field} {v!r}, which is not an integer: {dict(entries[i])}")
  return np.array([int(v) for v in values], np.int64)


def _floats(entries: Sequence[Mapping[str, Any]], field: str, what: str, shape: tuple[int, ...]) -> np.ndarray:
  """float64 `[N, *shape]` of `entry[field]`, naming the first entry that is not `shape` numbers."""
  values = [e[field] for e in entries]
  if not values:
    return np.zeros((0, *shape), np.float64)
  try:
    column = np.asarray(values, np.float64)
  except (TypeError, ValueError):
    column = None
  if column is not None and column.shape == (len(values), *shape):
    return column
  for i, v in enumerate(values):
    try:
      ok = isinstance(v, (int, float, np.number, list, tuple, np.ndarray)) and np.shape(v) == shape
      ok = ok and np.asarray(v, np.float64).shape == shape
    except (TypeError, ValueError):
      ok = False
    if not ok:
      form = "[x, y, w, h] (4 numbers)" if shape == (4,) else "a number"
      raise ValueError(f"{what} #{i} has {field} {v!r}, which is not {form}: {dict(entries[i])}")
  return np.asarray(values, np.float64)


def _first_bad(bad: np.ndarray, entries: Sequence[Mapping[str, Any]], what: str, message: str) -> None:
  if bad.any():
    k = int(np.argmax(bad))
    raise ValueError(f"{what} #{k} {message}: {dict(entries[k])}")


def parse_ground_truth(ground_truth: Mapping[str, Any]) -> dict[str, Any]:
  """Returns COCO ground truth as arrays, after validating it (module docstring).

  Keys: `image_ids [I]` and `category_ids [K]` (sorted, unique), `category_names` (id -> name), and per annotation
  `ann_ids`, `image_id`, `category_id` `[G]` int64, `boxes [G, 4]` xywh float64, `area [G]`, `crowd [G]`
  (`iscrowd`, default 0) and `difficult [G]` (VOC's flag, default 0).
  """
  if not isinstance(ground_truth, Mapping):
    raise ValueError(f"ground truth must be a COCO-format dict, got {type(ground_truth).__name__}")
  for key in ("images", "annotations", "categories"):
    if key not in ground_truth:
      raise ValueError(f"ground truth has no {key!r} list (keys: {sorted(ground_truth)})")
  images, cats, anns = ground_truth["images"], ground_truth["categories"], ground_truth["annotations"]
  _require(images, ("id",), "ground-truth image")
  _require(cats, ("id",), "ground-truth category")
  _require(anns, ("id", "image_id", "category_id", "bbox", "area"), "ground-truth annotation")
  image_ids = np.unique(_ids(images, "id", "ground-truth image"))
  category_ids = np.unique(_ids(cats, "id", "ground-truth category"))
  ann_ids = _ids(anns, "id", "ground-truth annotation")
  if len(np.unique(ann_ids)) != len(ann_ids):
    values, counts = np.unique(ann_ids, return_counts=True)
    raise ValueError(f"ground-truth annotation ids are not unique: {values[counts > 1][:10].tolist()}")
  _first_bad(ann_ids == 0, anns, "ground-truth annotation",
             "has id 0, which pycocotools cannot match (it reads a match to id 0 as no match)")
  image_id = _ids(anns, "image_id", "ground-truth annotation")
  category_id = _ids(anns, "category_id", "ground-truth annotation")
  _first_bad(~np.isin(image_id, image_ids), anns, "ground-truth annotation",
             "has an image_id that is not in the ground truth's images")
  _first_bad(~np.isin(category_id, category_ids), anns, "ground-truth annotation",
             "has a category_id that is not in the ground truth's categories")
  boxes = _floats(anns, "bbox", "ground-truth annotation", (4,))
  area = _floats(anns, "area", "ground-truth annotation", ())
  _first_bad(~np.all(np.isfinite(boxes), axis=1), anns, "ground-truth annotation", "has a non-finite bbox")
  _first_bad(~np.isfinite(area), anns, "ground-truth annotation", "has a non-finite area")
  return {
      "image_ids": image_ids,
      "category_ids": category_ids,
      "category_names": {int(c["id"]): str(c.get("name", c["id"])) for c in cats},
      "ann_ids": ann_ids,
      "image_id": image_id,
      "category_id": category_id,
      "boxes": boxes,
      "area": area,
      "crowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], bool),
      "difficult": np.array([bool(a.get("difficult", 0)) for a in anns], bool),
  }


def _parse_boxes_and_scores(entries: Sequence[Mapping[str, Any]], what: str) -> tuple[np.ndarray, np.ndarray]:
  boxes = _floats(entries, "bbox", what, (4,))
  scores = _floats(entries, "score", what, ())
  _first_bad(~np.all(np.isfinite(boxes), axis=1), entries, what, "has a non-finite bbox")
  _first_bad((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0), entries, what, "has a bbox with w or h <= 0")
  _first_bad(~np.isfinite(scores), entries, what, "has a non-finite score")
  return boxes, scores


def parse_detections(detections: Sequence[Mapping[str, Any]], gt: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Returns a COCO results list as validated arrays: `image_id`, `category_id` `[N]`, `boxes [N, 4]` xywh,
  `scores [N]` and `area [N]` (w * h, as pycocotools' `loadRes` sets it). `gt` is a `parse_ground_truth` result."""
  what = "detection"
  _require(detections, ("image_id", "category_id", "bbox", "score"), what)
  image_id = _ids(detections, "image_id", what)
  category_id = _ids(detections, "category_id", what)
  _first_bad(~np.isin(image_id, gt["image_ids"]), detections, what, "has an image_id that is not in the ground truth")
  _first_bad(~np.isin(category_id, gt["category_ids"]), detections, what,
             "has a category_id that is not in the ground truth")
  boxes, scores = _parse_boxes_and_scores(detections, what)
  return {"image_id": image_id, "category_id": category_id, "boxes": boxes, "scores": scores,
          "area": boxes[:, 2] * boxes[:, 3]}


def parse_proposals(proposals: Sequence[Mapping[str, Any]], gt: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Returns class-agnostic proposals (`image_id, bbox, score`; any `category_id` is ignored) as validated arrays
  `image_id [N]`, `boxes [N, 4]` xywh and `scores [N]`."""
  what = "proposal"
  _require(proposals, ("image_id", "bbox", "score"), what)
  image_id = _ids(proposals, "image_id", what)
  _first_bad(~np.isin(image_id, gt["image_ids"]), proposals, what, "has an image_id that is not in the ground truth")
  boxes, scores = _parse_boxes_and_scores(proposals, what)
  return {"image_id": image_id, "boxes": boxes, "scores": scores}
