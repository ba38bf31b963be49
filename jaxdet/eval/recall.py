"""Proposal recall (class-agnostic): recall at 1/10/100/1000 proposals per image, average recall and its curve.

Average recall (AR) is recall averaged over IoU thresholds 0.50:0.05:0.95 (Hosang et al. 2016, as COCO reports
it). Proposals are matched one-to-one to ground truth with the COCO greedy rule of the shared matching core,
in descending score order; crowd regions are ignored (matching one neither helps nor hurts).
`plot_recall_vs_iou` draws the curves.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from jaxdet.eval.coco import AREA_RANGES, IOU_THRESHOLDS
from jaxdet.eval.inputs import parse_ground_truth, parse_proposals
from jaxdet.eval.matching import match_groups


def proposal_recall(ground_truth: Mapping[str, Any], proposals: Sequence[Mapping[str, Any]], *,
                    max_proposals: Sequence[int] = (1, 10, 100, 1000),
                    iou_thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS) -> dict[str, Any]:
  """Returns `{"AR@K": float for each K, "recall": [T, len(max_proposals)], "iou_thresholds": [T]}`.

  `recall[t, j]` is the fraction of non-crowd ground truth matched at IoU >= `iou_thresholds[t]` by the top
  `max_proposals[j]` proposals of its image: the recall-vs-IoU curve for each K. Equal to pycocotools' `COCOeval`
  recall with `useCats=0`, `maxDets=max_proposals`, area "all" (so ground truth with an `area` outside [0, 1e10]
  is ignored too); -1 everywhere when there is no such ground truth, as pycocotools.

  Args:
    ground_truth: COCO-format dict; categories are ignored (class-agnostic), `iscrowd` regions are ignored.
    proposals: list of `image_id, bbox [x, y, w, h], score` (a `category_id`, if any, is ignored).
    max_proposals: the K of AR@K: the top-K proposals per image by score.
    iou_thresholds: `[T]` thresholds of the recall-vs-IoU curve; AR@K is the mean over them.
  """
  gt = parse_ground_truth(ground_truth)
  props = parse_proposals(proposals, gt)
  img_pos = {int(i): k for k, i in enumerate(gt["image_ids"])}
  boxes, scores = props["boxes"], props["scores"]
  thresholds = np.asarray(iou_thresholds, np.float64)
  max_k = max(max_proposals)
  det_img = np.array([img_pos[i] for i in props["image_id"].tolist()], np.int64)
  gt_img = np.array([img_pos[i] for i in gt["image_id"].tolist()], np.int64)
  low, high = AREA_RANGES["all"]
  ignore = gt["crowd"] | (gt["area"] < low) | (gt["area"] > high)
  matches = match_groups(det_group=det_img, det_boxes=boxes, det_scores=scores, gt_group=gt_img,
                         gt_boxes=gt["boxes"], gt_crowd=gt["crowd"], gt_ignore=ignore[None],
                         iou_thresholds=thresholds, max_dets=max_k, rule="coco")
  num_pos = int(np.sum(~ignore))
  hits = matches.matched[0] & ~matches.ignored[0]  # [T, N]: one per matched non-ignored ground truth
  recall = np.full((len(thresholds), len(max_proposals)), -1.0)
  for j, k in enumerate(max_proposals):
    if num_pos:
      recall[:, j] = hits[:, matches.rank < k].sum(axis=1) / num_pos
  out = {f"AR@{k}": float(recall[:, j].mean()) for j, k in enumerate(max_proposals)}
  out.update(recall=recall, iou_thresholds=thresholds)
  return out
