"""Pascal VOC detection AP (11-point VOC2007 and all-point VOC2010+) on the shared matching core.

Follows the devkit's `VOCevaldet` / py-faster-rcnn's `voc_eval`: per class, detections in descending score order
each look at the ground truth of highest IoU in their image; IoU > 0.5 (strictly) with an unmatched one is a true
positive, with an already matched one a false positive, with a `difficult` one neither. Recall is over the
non-difficult ground truth. Deliberate differences: boxes are continuous (no "+1" in widths, CONVENTIONS), and
score ties keep input order (a stable sort; the devkit's quicksort leaves them unspecified).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from jaxdet.eval.inputs import parse_detections, parse_ground_truth
from jaxdet.eval.matching import match_groups


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool = False) -> float:
  """Returns the AP of one precision/recall curve: VOC2007's 11-point mean, or the area under the envelope.

  Args:
    recall, precision: `[N]` cumulative recall and precision at each detection, in descending score order.
    use_07_metric: mean over recall 0, 0.1, ..., 1 of the best precision at that recall or above (VOC2007);
      otherwise the area under the monotone precision envelope, summed where recall changes (VOC2010+ devkit).
  """
  if use_07_metric:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
      above = recall >= t
      ap += (np.max(precision[above]) if above.any() else 0.0) / 11.0
    return float(ap)
  mrec = np.concatenate([[0.0], recall, [1.0]])
  mpre = np.concatenate([[0.0], precision, [0.0]])
  mpre = np.maximum.accumulate(mpre[::-1])[::-1]
  steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
  return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc_evaluate(ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], *,
                 iou_threshold: float = 0.5, use_07_metric: bool = False) -> dict[str, Any]:
  """Returns `{"mAP": float, "AP": {category_id: AP}, "curves": {category_id: (recall, precision)}}`.

  Args:
    ground_truth: COCO-format dict; an annotation's optional `difficult` flag (and `iscrowd`) marks it ignored.
    detections: COCO results list (`image_id, category_id, bbox [x, y, w, h], score`).
    iou_threshold: a match needs IoU strictly above it (0.5 in VOC).
    use_07_metric: 11-point interpolated AP (VOC2007 test) instead of the area under the curve (VOC2010+).

  A class with no non-difficult ground truth has AP NaN in `AP` and is left out of the mean, as the devkit's
  division by zero would leave it undefined.
  """
  gt = parse_ground_truth(ground_truth)
  dt = parse_detections(detections, gt)
  img_pos = {int(i): k for k, i in enumerate(gt["image_ids"])}
  cat_pos = {int(c): k for k, c in enumerate(gt["category_ids"])}
  num_img = len(img_pos)
  gt_group = np.array([cat_pos[c] * num_img + img_pos[i]
                       for c, i in zip(gt["category_id"].tolist(), gt["image_id"].tolist())], np.int64)
  dt_cat = np.array([cat_pos[c] for c in dt["category_id"].tolist()], np.int64)
  dt_group = dt_cat * num_img + np.array([img_pos[i] for i in dt["image_id"].tolist()], np.int64)
  ignore = (gt["difficult"] | gt["crowd"])[None]
  matches = match_groups(det_group=dt_group, det_boxes=dt["boxes"], det_scores=dt["scores"], gt_group=gt_group,
                         gt_boxes=gt["boxes"], gt_crowd=np.zeros_like(gt["crowd"]), gt_ignore=ignore,
                         iou_thresholds=np.array([iou_threshold]), max_dets=max(len(dt_group), 1), rule="voc")
  tp_all, ign_all = matches.matched[0, 0], matches.ignored[0, 0]
  gt_cat = np.array([cat_pos[c] for c in gt["category_id"].tolist()], np.int64)
  aps, curves = {}, {}
  for k, cat_id in enumerate(gt["category_ids"].tolist()):
    npos = int(np.sum((gt_cat == k) & ~ignore[0]))
    sel = np.nonzero(dt_cat == k)[0]
    sel = sel[np.argsort(-dt["scores"][sel], kind="mergesort")]
    tp = np.cumsum(tp_all[sel] & ~ign_all[sel], dtype=np.float64)
    fp = np.cumsum(~tp_all[sel] & ~ign_all[sel], dtype=np.float64)
    if npos == 0:
      aps[cat_id] = float("nan")
      continue
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    aps[cat_id] = voc_ap(recall, precision, use_07_metric=use_07_metric)
    curves[cat_id] = (recall, precision)
  defined = [v for v in aps.values() if not np.isnan(v)]
  return {"mAP": float(np.mean(defined)) if defined else float("nan"), "AP": aps, "curves": curves}
