"""`CocoEvaluator`: accumulates padded on-device detections batch by batch and evaluates them the COCO way."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from jaxdet.eval.coco import CocoEvalResult, evaluate_coco, format_summary


class CocoEvaluator:
  """Collects detections as COCO results and evaluates them against a COCO-format ground truth.

  Usage:
    evaluator = CocoEvaluator(source.coco_ground_truth(), source.category_ids)
    for batch in loader:
      dets = postprocess(...)                      # padded [B, K, ...] + valid [B, K]
      evaluator.add(batch["image_id"], boxes_in_original_pixels, dets.scores, dets.classes, dets.valid)
    metrics = evaluator.evaluate()                 # the 12 COCO numbers, pycocotools-equal
    print(evaluator.summary())

  Detections whose box is empty (w or h <= 0 after conversion) or whose box or score is not finite are skipped
  and counted in `num_skipped` (a detector can emit them; COCO results cannot hold them); the summary reports it.
  """

  def __init__(self, ground_truth: Mapping[str, Any], category_ids: Sequence[int]):
    """Args: the COCO-format ground truth; `category_ids[c]` is the dataset id of contiguous class index c."""
    self.ground_truth = ground_truth
    self.category_ids = np.asarray(category_ids, np.int64)
    self._image_ids = {int(im["id"]) for im in ground_truth["images"]}
    self._chunks: list[dict[str, np.ndarray]] = []
    self.num_skipped = 0
    self._result: CocoEvalResult | None = None

  def reset(self) -> None:
    """Drops every added batch (and the skip count), e.g. between evaluations of successive checkpoints."""
    self._chunks, self.num_skipped, self._result = [], 0, None

  def add(self, image_ids, boxes, scores, classes, valid) -> None:
    """Adds a batch: `image_ids [B]`, `boxes [B, K, 4]` xyxy original-image pixels, `scores [B, K]`,
    `classes [B, K]` contiguous indices, `valid` bool `[B, K]` (NumPy or JAX arrays)."""
    image_ids = np.asarray(image_ids).astype(np.int64)
    boxes = np.asarray(boxes, np.float64)
    scores, classes, valid = np.asarray(scores, np.float64), np.asarray(classes), np.asarray(valid, bool)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2] or valid.shape != scores.shape:
      raise ValueError(f"expected boxes [B, K, 4] with scores/classes/valid [B, K], got {boxes.shape}, "
                       f"{scores.shape}, {classes.shape}, {valid.shape}")
    unknown = [i for i in image_ids.tolist() if i not in self._image_ids]
    if unknown and valid[[i in unknown for i in image_ids.tolist()]].any():
      raise ValueError(f"image ids {unknown[:5]} are not in the ground truth")
    if valid.any() and (classes[valid].min() < 0 or classes[valid].max() >= len(self.category_ids)):
      raise ValueError(f"class indices must be in [0, {len(self.category_ids)}), got {np.unique(classes[valid])}")
    # Rounded as the results json stores them, so that a box kept here is never empty once written.
    xywh = np.round(np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1), 3)
    ok = valid & np.all(np.isfinite(xywh), axis=-1) & (xywh[..., 2] > 0) & (xywh[..., 3] > 0) & np.isfinite(scores)
    self.num_skipped += int(np.sum(valid & ~ok))
    b, k = np.nonzero(ok)
    self._chunks.append({"image_id": image_ids[b], "category_id": self.category_ids[classes[b, k]],
                         "bbox": xywh[b, k], "score": scores[b, k]})
    self._result = None

  def results(self) -> list[dict[str, Any]]:
    """Returns the COCO results list (`image_id, category_id, bbox [x, y, w, h], score`)."""
    out = []
    for c in self._chunks:
      for i, cat, box, score in zip(c["image_id"].tolist(), c["category_id"].tolist(), c["bbox"].tolist(),
                                    c["score"].tolist()):
        out.append({"image_id": i, "category_id": cat, "bbox": [round(v, 3) for v in box], "score": round(score, 5)})
    return out

  def write_results(self, path: str | os.PathLike[str]) -> None:
    """Writes the results json that pycocotools' `COCO.loadRes` reads."""
    with open(path, "w") as f:
      json.dump(self.results(), f)

  def evaluate_full(self) -> CocoEvalResult:
    """Returns the full `CocoEvalResult` (precision / recall / score arrays, per-category AP)."""
    if self._result is None:
      self._result = evaluate_coco(self.ground_truth, self.results())
    return self._result

  def evaluate(self) -> dict[str, float]:
    """Returns the 12 COCO numbers plus `AP/<category name>` for each category."""
    result = self.evaluate_full()
    metrics = dict(result.stats)
    for cat_id, ap in result.per_category_ap.items():
      metrics[f"AP/{result.category_names.get(cat_id, cat_id)}"] = ap
    return metrics

  def summary(self) -> str:
    """Returns the pycocotools-style table, per-category AP, and the count of skipped detections."""
    result = self.evaluate_full()
    lines = [format_summary(result.stats), "", "per-category AP@[.50:.95]:"]
    for cat_id, ap in result.per_category_ap.items():
      lines.append(f"  {result.category_names.get(cat_id, str(cat_id)):<20} {ap:0.3f}")
    if self.num_skipped:
      lines.append(f"skipped {self.num_skipped} detections with empty or non-finite boxes or scores")
    return "\n".join(lines)
