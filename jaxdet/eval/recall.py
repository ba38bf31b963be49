"""Proposal recall (class-agnostic): recall at 1/10/100/1000 proposals per image, average recall and its curve.

Average recall (AR) is recall averaged over IoU thresholds 0.50:0.05:0.95 (Hosang et al. 2016, as COCO reports
it). Proposals are matched one-to-one to ground truth with the COCO greedy rule of the shared matching core,
in descending score order; crowd regions are ignored (matching one neither helps nor hurts).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from jaxdet.eval.coco import IOU_THRESHOLDS, parse_ground_truth
from jaxdet.eval.matching import match_groups


def proposal_recall(ground_truth: Mapping[str, Any], proposals: Sequence[Mapping[str, Any]], *,
                    max_proposals: Sequence[int] = (1, 10, 100, 1000),
                    iou_thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS) -> dict[str, Any]:
  """Returns `{"AR@K": float for each K, "recall": [T, len(max_proposals)], "iou_thresholds": [T]}`.

  Args:
    ground_truth: COCO-format dict; categories are ignored (class-agnostic), `iscrowd` regions are ignored.
    proposals: list of `image_id, bbox [x, y, w, h], score` (a `category_id`, if any, is ignored).
    max_proposals: the K of AR@K: the top-K proposals per image by score.
    iou_thresholds: `[T]` thresholds of the recall-vs-IoU curve; AR@K is the mean over them.
  """
  gt = parse_ground_truth(ground_truth)
  img_pos = {int(i): k for k, i in enumerate(gt["image_ids"])}
  for i, p in enumerate(proposals):
    if "image_id" not in p or "bbox" not in p or "score" not in p:
      raise ValueError(f"proposal #{i} needs image_id, bbox and score: {dict(p)}")
    if int(p["image_id"]) not in img_pos:
      raise ValueError(f"proposal #{i} has image_id {p['image_id']} that is not in the ground truth")
  boxes = np.array([p["bbox"] for p in proposals], np.float64).reshape(-1, 4)
  scores = np.array([p["score"] for p in proposals], np.float64)
  bad = ~np.all(np.isfinite(boxes), axis=1) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | ~np.isfinite(scores)
  if bad.any():
    k = int(np.argmax(bad))
    raise ValueError(f"proposal #{k} has a non-finite or empty box or score: {dict(proposals[k])}")
  thresholds = np.asarray(iou_thresholds, np.float64)
  max_k = max(max_proposals)
  det_img = np.array([img_pos[int(p["image_id"])] for p in proposals], np.int64)
  gt_img = np.array([img_pos[i] for i in gt["image_id"].tolist()], np.int64)
  matches = match_groups(det_group=det_img, det_boxes=boxes, det_scores=scores, gt_group=gt_img,
                         gt_boxes=gt["boxes"], gt_crowd=gt["crowd"], gt_ignore=gt["crowd"][None],
                         iou_thresholds=thresholds, max_dets=max_k, rule="coco")
  num_pos = int(np.sum(~gt["crowd"]))
  hits = matches.matched[0] & ~matches.ignored[0]  # [T, N]: one per matched non-crowd ground truth
  recall = np.zeros((len(thresholds), len(max_proposals)))
  for j, k in enumerate(max_proposals):
    recall[:, j] = hits[:, matches.rank < k].sum(axis=1) / max(num_pos, 1)
  out = {f"AR@{k}": float(recall[:, j].mean()) for j, k in enumerate(max_proposals)}
  out.update(recall=recall, iou_thresholds=thresholds)
  return out
