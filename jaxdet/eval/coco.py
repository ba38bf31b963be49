"""COCO bbox evaluation equal to pycocotools' `COCOeval(gt, dt, "bbox")`, vectorised in NumPy.

`evaluate_coco` reproduces `evaluate()` + `accumulate()` + `summarize()`: per (image, category) greedy matching at
IoU 0.50:0.05:0.95 (crowd regions matchable many times, IoU over the detection's area for them), ground truth
ignored outside each area range by its `area` field (bounds inclusive), unmatched detections outside the range
ignored, at most 100 detections per image and category by score (stable order), 101-point interpolated precision.

Differences from pycocotools, all on input it would mishandle (`jaxdet.eval.inputs` lists the checks): detections
with unknown image or category ids, non-finite or non-positive boxes or non-finite scores, missing fields, and
duplicate or zero annotation ids raise a `ValueError` naming the entry (pycocotools asserts, crashes with a
`KeyError`, silently drops the detection, or — for annotation id 0 — miscounts the match as a false positive).
A missing `iscrowd` reads as 0 (pycocotools needs the field).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from jaxdet.eval.inputs import parse_detections, parse_ground_truth
from jaxdet.eval.matching import match_groups

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
AREA_RANGES = {"all": (0.0, 1e5**2), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2),
               "large": (96.0**2, 1e5**2)}
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclasses.dataclass(frozen=True)
class CocoEvalResult:
  """Everything `COCOeval.accumulate()` computes, plus the summary.

  Attributes:
    stats: the 12 summary numbers by name (`STAT_KEYS`), -1 where undefined.
    precision: `[T=10, R=101, K, A=4, M=3]` interpolated precision, -1 where a category has no ground truth.
    recall: `[T, K, A, M]` final recall.
    scores: `[T, R, K, A, M]` the score at which each recall threshold is reached (0 beyond the last detection).
    category_ids: `[K]` the dataset category ids, sorted (axis K).
    per_category_ap: dataset category id -> AP@[.5:.95] (area all, 100 detections), -1 when undefined.
    category_names: dataset category id -> name.
  """

  stats: dict[str, float]
  precision: np.ndarray
  recall: np.ndarray
  scores: np.ndarray
  category_ids: np.ndarray
  per_category_ap: dict[int, float]
  category_names: dict[int, str]


def _accumulate_category(scores, matched, ignored, det_rank, npig):
  """Precision `[S, T, R]`, recall `[S, T]` and scores `[S, T, R]` for one category's detections.

  `scores`, `det_rank`: `[N]` in pycocotools' concatenation order; `matched`, `ignored`: `[S, T, N]`;
  `npig`: `[S]` number of non-ignored ground truth under each setting (area range).
  """
  num_s, num_t = matched.shape[:2]
  num_r = len(RECALL_THRESHOLDS)
  precision = np.full((num_s, num_t, num_r, len(MAX_DETS)), -1.0)
  recall = np.full((num_s, num_t, len(MAX_DETS)), -1.0)
  score_at = np.full((num_s, num_t, num_r, len(MAX_DETS)), -1.0)
  for mi, max_det in enumerate(MAX_DETS):
    keep = det_rank < max_det
    order = np.argsort(-scores[keep], kind="mergesort")
    sorted_scores = scores[keep][order]
    dtm = matched[:, :, keep][:, :, order]
    dtig = ignored[:, :, keep][:, :, order]
    tp = np.cumsum(dtm & ~dtig, axis=-1, dtype=np.float64)
    fp = np.cumsum(~dtm & ~dtig, axis=-1, dtype=np.float64)
    nd = tp.shape[-1]
    for s in range(num_s):
      if npig[s] == 0:
        continue
      rc = tp[s] / npig[s]
      pr = tp[s] / (fp[s] + tp[s] + np.spacing(1))
      recall[s, :, mi] = rc[:, -1] if nd else 0.0
      # Precision envelope: make it monotonically non-increasing from the right.
      pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
      q = np.zeros((num_t, num_r))
      ss = np.zeros((num_t, num_r))
      for t in range(num_t):
        inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
        inside = inds < nd
        q[t, inside] = pr[t, inds[inside]]
        ss[t, inside] = sorted_scores[inds[inside]]
      precision[s, :, :, mi] = q
      score_at[s, :, :, mi] = ss
  return precision, recall, score_at


def evaluate_coco(ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> CocoEvalResult:
  """Returns the full COCO bbox evaluation (`CocoEvalResult`) of a results list against a ground-truth dict.

  Args:
    ground_truth: COCO-format dict with `images`, `annotations` (`id, image_id, category_id, bbox [x, y, w, h],
      area, iscrowd`) and `categories`.
    detections: COCO results list of dicts `image_id, category_id, bbox [x, y, w, h], score`.
  """
  gt = parse_ground_truth(ground_truth)
  dt = parse_detections(detections, gt)
  img_pos = {int(i): k for k, i in enumerate(gt["image_ids"])}
  cat_pos = {int(c): k for k, c in enumerate(gt["category_ids"])}
  num_img, num_cat = len(gt["image_ids"]), len(gt["category_ids"])
  gt_img = np.array([img_pos[i] for i in gt["image_id"].tolist()], np.int64)
  gt_cat = np.array([cat_pos[c] for c in gt["category_id"].tolist()], np.int64)
  dt_img = np.array([img_pos[i] for i in dt["image_id"].tolist()], np.int64)
  dt_cat = np.array([cat_pos[c] for c in dt["category_id"].tolist()], np.int64)

  ranges = np.array(list(AREA_RANGES.values()))
  gt_ignore = gt["crowd"][None] | (gt["area"][None] < ranges[:, :1]) | (gt["area"][None] > ranges[:, 1:])
  matches = match_groups(det_group=dt_cat * num_img + dt_img, det_boxes=dt["boxes"], det_scores=dt["scores"],
                         gt_group=gt_cat * num_img + gt_img, gt_boxes=gt["boxes"], gt_crowd=gt["crowd"],
                         gt_ignore=gt_ignore, iou_thresholds=IOU_THRESHOLDS, max_dets=MAX_DETS[-1], rule="coco")
  det_out = (dt["area"][None] < ranges[:, :1]) | (dt["area"][None] > ranges[:, 1:])  # [A, N]
  ignored = matches.ignored | (~matches.matched & det_out[:, None, :])

  num_t, num_r, num_a, num_m = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(MAX_DETS)
  precision = -np.ones((num_t, num_r, num_cat, num_a, num_m))
  recall = -np.ones((num_t, num_cat, num_a, num_m))
  scores = -np.ones((num_t, num_r, num_cat, num_a, num_m))
  kept = matches.rank < MAX_DETS[-1]
  # pycocotools concatenates each image's score-sorted detections in image-id order, then stable-sorts by score.
  order = np.lexsort((matches.rank, dt_img, dt_cat))
  order = order[kept[order]]
  bounds = np.searchsorted(dt_cat[order], np.arange(num_cat + 1))
  npig_all = np.stack([np.bincount(gt_cat[~gi], minlength=num_cat) for gi in gt_ignore])  # [A, K]
  for k in range(num_cat):
    if not npig_all[:, k].any():
      continue
    sel = order[bounds[k]:bounds[k + 1]]
    p, r, s = _accumulate_category(dt["scores"][sel], matches.matched[:, :, sel], ignored[:, :, sel],
                                   matches.rank[sel], npig_all[:, k])
    precision[:, :, k] = p.transpose(1, 2, 0, 3)
    recall[:, k] = r.transpose(1, 0, 2)
    scores[:, :, k] = s.transpose(1, 2, 0, 3)

  stats = summarize(precision, recall)
  per_cat = {int(c): _mean_defined(precision[:, :, k, 0, -1]) for k, c in enumerate(gt["category_ids"])}
  return CocoEvalResult(stats=stats, precision=precision, recall=recall, scores=scores,
                        category_ids=gt["category_ids"], per_category_ap=per_cat,
                        category_names=gt["category_names"])


def _mean_defined(x: np.ndarray) -> float:
  defined = x[x > -1]
  return float(np.mean(defined)) if defined.size else -1.0


def ap_at_iou(result: CocoEvalResult, iou: float) -> float:
  """Returns AP at one of the 10 IoU thresholds (area all, 100 detections), -1 when undefined: the reading of
  pycocotools' `summarize()` for AP50 / AP75, at any threshold (e.g. AP90 for localisation quality)."""
  matches = np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))
  if matches.size != 1:
    raise ValueError(f"iou must be one of COCO's thresholds {IOU_THRESHOLDS.round(2).tolist()}, got {iou}")
  p = result.precision[matches[0], :, :, 0, -1]
  defined = p[p > -1]
  return float(np.mean(defined)) if defined.size else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
  """Returns the 12 `COCOeval.summarize()` numbers from accumulated precision `[T,R,K,A,M]` / recall `[T,K,A,M]`."""
  area_index = {name: i for i, name in enumerate(AREA_RANGES)}
  last = len(MAX_DETS) - 1

  def ap(t=None, area="all"):
    p = precision[:, :, :, area_index[area], last]
    return _mean_defined(p if t is None else p[t])

  def ar(m, area="all"):
    return _mean_defined(recall[:, :, area_index[area], m])

  return {"AP": ap(), "AP50": ap(0), "AP75": ap(5), "APs": ap(area="small"), "APm": ap(area="medium"),
          "APl": ap(area="large"), "AR1": ar(0), "AR10": ar(1), "AR100": ar(last), "ARs": ar(last, "small"),
          "ARm": ar(last, "medium"), "ARl": ar(last, "large")}


def coco_evaluate(ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Returns `{AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl}` equal to pycocotools' stats."""
  return evaluate_coco(ground_truth, detections).stats


def format_summary(stats: Mapping[str, float]) -> str:
  """Returns the 12 stats in pycocotools' `summarize()` layout."""
  rows = (("Average Precision", "AP", "0.50:0.95", "all", 100), ("Average Precision", "AP50", "0.50", "all", 100),
          ("Average Precision", "AP75", "0.75", "all", 100), ("Average Precision", "APs", "0.50:0.95", "small", 100),
          ("Average Precision", "APm", "0.50:0.95", "medium", 100),
          ("Average Precision", "APl", "0.50:0.95", "large", 100),
          ("Average Recall", "AR1", "0.50:0.95", "all", 1), ("Average Recall", "AR10", "0.50:0.95", "all", 10),
          ("Average Recall", "AR100", "0.50:0.95", "all", 100), ("Average Recall", "ARs", "0.50:0.95", "small", 100),
          ("Average Recall", "ARm", "0.50:0.95", "medium", 100), ("Average Recall", "ARl", "0.50:0.95", "large", 100))
  lines = []
  for title, key, iou, area, max_det in rows:
    short = "(AP)" if title.endswith("Precision") else "(AR)"
    lines.append(f" {title:<18} {short} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_det:>3} ] = "
                 f"{stats[key]:0.3f}")
  return "\n".join(lines)
