"""Pictures of detections beside the ground truth, false positives and missed objects marked, for any detector.

`match_outcomes` decides which drawn detections are false positives and which objects were missed, with the
COCO greedy matching of `jaxdet.eval.matching` at one IoU threshold (0.5) over the detections above the display
threshold; `detection_picture` draws one image (predict.py), `detection_grid` N images under one legend (the
evaluation during training). Both read one image's slice of `Detections` mapped to stored-image pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxdet.data.visualize import class_color, draw_detections, font_size_for, legend_strip, stack, tile
from jaxdet.eval.matching import match_groups


@dataclasses.dataclass(frozen=True)
class Outcomes:
  """What matching made of one image's detections and ground truth.

  Attributes:
    true_positive: bool `[K]`, a detection matched to a same-class object at IoU >= the threshold.
    false_positive: bool `[K]`, a considered detection matched to nothing (matches to crowd regions are neither).
    missed: bool `[M]`, a valid, non-crowd object that no considered detection matched.
  """

  true_positive: np.ndarray
  false_positive: np.ndarray
  missed: np.ndarray


def match_outcomes(boxes, scores, classes, valid, gt_boxes, gt_labels, gt_valid, gt_crowd=None, *,
                   iou_threshold: float = 0.5) -> Outcomes:
  """Returns the `Outcomes` of matching one image's detections to its ground truth, COCO's greedy rule.

  `boxes [K, 4]`, `scores [K]`, `classes [K]`, `valid [K]` (the detections to consider: pass the display
  threshold folded into `valid`); `gt_boxes [M, 4]`, `gt_labels [M]`, `gt_valid [M]`, `gt_crowd [M]`; all xyxy
  in the same pixels. Within each class, detections in descending score order each take the free object of highest
  IoU >= `iou_threshold` (pycocotools' `evaluateImg`, by calling `jaxdet.eval.matching.match_groups`, the code the
  COCO metrics use), so a duplicate detection of an object already taken is a false positive.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  k = len(boxes)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  m = len(gt_boxes)
  det = np.nonzero(np.asarray(valid, bool).reshape(k))[0]
  gt = np.nonzero(np.asarray(gt_valid, bool).reshape(m))[0]
  crowd = np.zeros(m, bool) if gt_crowd is None else np.asarray(gt_crowd, bool).reshape(m)

  def xywh(b):
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)

  result = match_groups(det_group=np.asarray(classes, np.int64).reshape(k)[det], det_boxes=xywh(boxes[det]),
                        det_scores=np.asarray(scores, np.float64).reshape(k)[det],
                        gt_group=np.asarray(gt_labels, np.int64).reshape(m)[gt], gt_boxes=xywh(gt_boxes[gt]),
                        gt_crowd=crowd[gt], gt_ignore=crowd[gt][None], iou_thresholds=np.array([iou_threshold]),
                        max_dets=max(1, len(det)))
  true_positive, false_positive, missed = np.zeros(k, bool), np.zeros(k, bool), np.zeros(m, bool)
  true_positive[det] = result.matched[0, 0] & ~result.ignored[0, 0]
  false_positive[det] = ~result.matched[0, 0]
  missed[gt] = ~result.gt_matched[0, 0] & ~crowd[gt]
  return Outcomes(true_positive, false_positive, missed)


@dataclasses.dataclass(frozen=True)
class PictureInput:
  """One image to draw: the stored image, its ground truth (None where unknown) and its detections.

  Attributes:
    image: uint8 `[H, W, 3]` as stored. image_id: the dataset's id.
    boxes, scores, classes, valid: `[K, 4]` xyxy stored-image pixels, `[K]`, `[K]`, `[K]` (one image's slice of
      `Detections`, as `jaxdet.train.evaluate.predict_split` yields it).
    gt_boxes, gt_labels, gt_crowd: `[M, 4]` xyxy stored-image pixels, `[M]`, `[M]`; None for images without
      annotations (e.g. files given to predict.py): then nothing is called a false positive or a miss.
    name: what captions call the image (e.g. its file name); "image <image_id>" when None.
  """

  image: np.ndarray
  image_id: int
  boxes: np.ndarray
  scores: np.ndarray
  classes: np.ndarray
  valid: np.ndarray
  gt_boxes: np.ndarray | None = None
  gt_labels: np.ndarray | None = None
  gt_crowd: np.ndarray | None = None
  name: str | None = None

  @property
  def has_ground_truth(self) -> bool:
    return self.gt_boxes is not None


def _draw(item: PictureInput, *, class_names, score_threshold: float, iou_threshold: float, min_side: int,
          scale: float | None):
  """Returns (picture, counts, classes shown): `item` drawn, with its detections above the threshold."""
  shown = np.asarray(item.valid, bool) & (np.asarray(item.scores) > score_threshold)
  counts = {"detections": int(shown.sum())}
  present = set(np.asarray(item.classes)[shown].tolist())
  if not item.has_ground_truth:
    picture = draw_detections(item.image, item.boxes, scores=item.scores, classes=item.classes, valid=shown,
                              class_names=class_names, min_side=min_side, scale=scale)
    return picture, counts, present
  gt_valid = np.ones(len(item.gt_boxes), bool)
  outcome = match_outcomes(item.boxes, item.scores, item.classes, shown, item.gt_boxes, item.gt_labels, gt_valid,
                           item.gt_crowd, iou_threshold=iou_threshold)
  counts.update(tp=int(outcome.true_positive.sum()), fp=int(outcome.false_positive.sum()),
                missed=int(outcome.missed.sum()))
  present |= set(np.asarray(item.gt_labels).tolist())
  picture = draw_detections(item.image, item.boxes, scores=item.scores, classes=item.classes, valid=shown,
                            class_names=class_names, false_positive=outcome.false_positive, gt_boxes=item.gt_boxes,
                            gt_labels=item.gt_labels, gt_valid=gt_valid, missed=outcome.missed, min_side=min_side,
                            scale=scale)
  return picture, counts, present


def legend_entries(class_names: Sequence[str] | None, classes: Sequence[int], *, score_threshold: float,
                   iou_threshold: float, ground_truth: bool = True) -> list[tuple]:
  """Returns `legend_strip` entries: the marks used, then a colour swatch per class in `classes` (sorted)."""
  entries = [("box", (235, 235, 235), f"detection, score > {score_threshold:.2f}")]
  if ground_truth:
    entries = [("dashed", None, "ground truth"), *entries,
               ("cross", None, f"false positive (matches no same-class object at IoU >= {iou_threshold:g})"),
               ("missed", None, "missed object")]
  for c in sorted(int(c) for c in classes):
    entries.append(("fill", class_color(c), class_names[c] if class_names and 0 <= c < len(class_names) else str(c)))
  return entries


def _summary(item: PictureInput, counts: dict[str, int]) -> str:
  name = item.name if item.name is not None else f"image {item.image_id}"
  if "tp" not in counts:
    return f"{name}: {counts['detections']} detections"
  return f"{name}: {counts['tp']} correct, {counts['fp']} false, {counts['missed']} missed"


def detection_picture(item: PictureInput, *, class_names: Sequence[str] | None = None, score_threshold: float = 0.3,
                      iou_threshold: float = 0.5, min_side: int = 512, scale: float | None = None,
                      title: str = "") -> np.ndarray:
  """Returns uint8 `[h, w, 3]`: `item` drawn at display scale (`draw_detections`) under a strip with its legend.

  The strip says the image id, the counts of correct / false / missed detections at `iou_threshold` (when the
  ground truth is known), the score threshold, and `title` (e.g. the checkpoint step).
  """
  picture, counts, present = _draw(item, class_names=class_names, score_threshold=score_threshold,
                                   iou_threshold=iou_threshold, min_side=min_side, scale=scale)
  heading = _summary(item, counts) + (f" · {title}" if title else "")
  strip = legend_strip(picture.shape[1], title=heading, font_size=font_size_for(min(picture.shape[:2])),
                       entries=legend_entries(class_names, present, score_threshold=score_threshold,
                                              iou_threshold=iou_threshold, ground_truth=item.has_ground_truth))
  return stack(strip, picture)


def detection_grid(items: Sequence[PictureInput], *, class_names: Sequence[str] | None = None,
                   score_threshold: float = 0.3, iou_threshold: float = 0.5, min_side: int = 512,
                   scale: float | None = None, columns: int = 4, title: str = "") -> np.ndarray:
  """Returns uint8 `[h, w, 3]`: the `items` drawn at display scale, `columns` per row, under one title and legend.

  Each picture has a one-line caption: image id and its correct / false / missed counts.
  """
  if not items:
    raise ValueError("detection_grid needs at least one image")
  cells, present = [], set()
  for item in items:
    picture, counts, shown = _draw(item, class_names=class_names, score_threshold=score_threshold,
                                   iou_threshold=iou_threshold, min_side=min_side, scale=scale)
    present |= shown
    caption = legend_strip(picture.shape[1], title=_summary(item, counts),
                           font_size=font_size_for(min(picture.shape[:2])))
    cells.append(stack(caption, picture))
  grid = tile(cells, columns=columns)
  font_size = font_size_for(min(cells[0].shape[:2])) + 2
  header = legend_strip(grid.shape[1], title=title, font_size=font_size,
                        entries=legend_entries(class_names, present, score_threshold=score_threshold,
                                               iou_threshold=iou_threshold,
                                               ground_truth=all(item.has_ground_truth for item in items)))
  return stack(header, grid)
