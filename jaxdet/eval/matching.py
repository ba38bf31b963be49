"""The matching core shared by COCO, VOC and proposal recall: greedy detection-to-ground-truth assignment.

Detections and ground truth are grouped by (image, category); each group is matched independently, in descending
score order, at every IoU threshold at once. Groups are padded into chunks of similar size so the greedy loop runs
over at most `max(D)` detections of a chunk while everything else is vectorised over groups, thresholds and
ground truth (NumPy, float64 — the evaluators must reproduce pycocotools' double-precision arithmetic).

Two greedy rules are supported:

* `coco` (pycocotools `COCOeval.evaluateImg`): a detection takes, among ground truth not yet taken (crowd regions
  can be taken many times), the non-ignored one of highest IoU >= t; only if there is none, the ignored one of
  highest IoU >= t. Ties go to the later ground truth in annotation order, as pycocotools' `>=` scan does.
* `voc` (the VOC devkit's `VOCevaldet`): a detection looks only at the ground truth of highest IoU (first on
  ties, taken or not); IoU > t (strictly) with an untaken one is a true positive, with a taken one a false
  positive, with a `difficult` (ignored) one neither.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_CHUNK_ELEMENTS = 1 << 21  # Upper bound on chunk_groups * max_dets * max_gts * thresholds for one matching pass.


def box_iou_xywh(dets: np.ndarray, gts: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
  """Returns `[..., D, M]` float64 IoU of `[..., D, 4]` and `[..., M, 4]` xywh boxes, pycocotools' `bbIou`.

  For a crowd ground truth the union is the detection's area (intersection over detection). The arithmetic
  follows maskApi.c operation by operation so results are bit-identical to pycocotools.
  """
  d = dets[..., :, None, :]
  g = gts[..., None, :, :]
  w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
  h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
  inter = w * h
  det_area = d[..., 2] * d[..., 3]
  union = np.where(gt_crowd[..., None, :], det_area, det_area + g[..., 2] * g[..., 3] - inter)
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = inter / union
  return np.where((w > 0) & (h > 0), iou, 0.0)


@dataclasses.dataclass(frozen=True)
class GroupedMatches:
  """Per-detection outcome of matching, in the detections' input order.

  Attributes:
    matched: bool `[S, T, N]`: detection n is matched at threshold t under setting s.
    ignored: bool `[S, T, N]`: detection n is matched to an ignored ground truth (neither TP nor FP).
    rank: int `[N]` position of the detection in its group's score order (>= max_dets means dropped).
    gt_matched: bool `[S, T, G]` ground truth g (input order) is matched by some detection.
  """

  matched: np.ndarray
  ignored: np.ndarray
  rank: np.ndarray
  gt_matched: np.ndarray


def _group_positions(group: np.ndarray, order: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """Position of each item within its group when items are taken in `order`; and group sizes."""
  sizes = np.bincount(group, minlength=num_groups)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  pos = np.empty(len(group), np.int64)
  pos[order] = np.arange(len(group)) - starts[group[order]]
  return pos, sizes


def match_groups(*, det_group: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray, gt_group: np.ndarray,
                 gt_boxes: np.ndarray, gt_crowd: np.ndarray, gt_ignore: np.ndarray, iou_thresholds: np.ndarray,
                 max_dets: int, rule: str = "coco") -> GroupedMatches:
  """Returns the greedy matches of detections to ground truth within groups, for S ignore settings at once.

  Args:
    det_group: int `[N]` group id (e.g. image x category) of each detection, in `[0, num_groups)`.
    det_boxes: `[N, 4]` xywh detections; det_scores: `[N]`.
    gt_group: int `[G]` group id of each ground truth; gt_boxes: `[G, 4]` xywh; gt_crowd: bool `[G]`.
    gt_ignore: bool `[S, G]`: which ground truth is ignored under each setting (e.g. COCO's area ranges).
    iou_thresholds: `[T]` thresholds.
    max_dets: detections kept per group, highest scores first (ties: input order, a stable sort).
    rule: "coco" or "voc" (module docstring).
  """
  if rule not in ("coco", "voc"):
    raise ValueError(f"rule must be 'coco' or 'voc', got {rule!r}")
  num_settings = gt_ignore.shape[0]
  thresholds = np.asarray(iou_thresholds, np.float64)
  num_t = len(thresholds)
  n, num_gt = len(det_group), len(gt_group)
  num_groups = int(max(det_group.max(initial=-1), gt_group.max(initial=-1)) + 1)

  det_order = np.lexsort((np.arange(n), -det_scores, det_group))
  rank, det_sizes = _group_positions(det_group, det_order, num_groups)
  gt_order = np.lexsort((np.arange(num_gt), gt_group))
  gt_pos, gt_sizes = _group_positions(gt_group, gt_order, num_groups)
  det_sizes = np.minimum(det_sizes, max_dets)

  matched = np.zeros((num_settings, num_t, n), bool)
  ignored = np.zeros((num_settings, num_t, n), bool)
  gt_matched = np.zeros((num_settings, num_t, num_gt), bool)
  # Only groups with both detections and ground truth need matching; sort them by size so chunks pad little.
  active = np.nonzero((det_sizes > 0) & (gt_sizes > 0))[0]
  if len(active) == 0:
    return GroupedMatches(matched, ignored, rank, gt_matched)
  active = active[np.lexsort((det_sizes[active], gt_sizes[active]))]
  slot = np.full(num_groups, -1, np.int64)
  kept = rank < max_dets

  start = 0
  while start < len(active):
    d_max, m_max = det_sizes[active[start]], gt_sizes[active[start]]
    stop = start + 1
    while stop < len(active):
      d_new, m_new = max(d_max, det_sizes[active[stop]]), max(m_max, gt_sizes[active[stop]])
      if (stop + 1 - start) * d_new * m_new * num_t * num_settings > _CHUNK_ELEMENTS and stop > start:
        break
      d_max, m_max, stop = d_new, m_new, stop + 1
    chunk = active[start:stop]
    start = stop
    slot[chunk] = np.arange(len(chunk))

    det_idx = np.full((len(chunk), d_max), -1, np.int64)
    sel = np.nonzero(kept & (slot[det_group] >= 0))[0]
    det_idx[slot[det_group[sel]], rank[sel]] = sel
    gt_idx = np.full((len(chunk), m_max), -1, np.int64)
    sel_gt = np.nonzero(slot[gt_group] >= 0)[0]
    gt_idx[slot[gt_group[sel_gt]], gt_pos[sel_gt]] = sel_gt
    slot[chunk] = -1

    _match_chunk(det_idx, gt_idx, det_boxes, gt_boxes, gt_crowd, gt_ignore, thresholds, rule,
                 matched, ignored, gt_matched)
  return GroupedMatches(matched, ignored, rank, gt_matched)


def _match_chunk(det_idx, gt_idx, det_boxes, gt_boxes, gt_crowd, gt_ignore, thresholds, rule,
                 matched, ignored, gt_matched) -> None:
  """Greedy matching of one padded chunk `[C, D]` detections x `[C, M]` ground truth; writes the outputs."""
  det_ok, gt_ok = det_idx >= 0, gt_idx >= 0
  crowd = gt_crowd[gt_idx] & gt_ok
  iou = box_iou_xywh(det_boxes[det_idx], gt_boxes[gt_idx], crowd)  # [C, D, M]
  iou = np.where(gt_ok[:, None, :], iou, -np.inf)
  ign = gt_ignore[:, gt_idx] & gt_ok[None]  # [S, C, M]
  num_s, num_t = ign.shape[0], len(thresholds)
  c, m = gt_idx.shape
  taken = np.zeros((num_s, num_t, c, m), bool)
  ign_b = ign[:, None]  # [S, 1, C, M]
  thr = thresholds[None, :, None, None]
  # pycocotools caps the threshold at 1 - 1e-10 so that IoU == 1 still matches at t = 1.
  coco_thr = np.minimum(thr, 1 - 1e-10)
  rows = np.arange(c)
  for d in range(det_idx.shape[1]):
    live = det_ok[:, d]
    if not live.any():
      continue
    ious = iou[:, d, :][None, None]  # [1, 1, C, M]
    if rule == "coco":
      free = ~taken | crowd[None, None]
      cand = free & (ious >= coco_thr)
      best_reg = _last_argmax(np.where(cand & ~ign_b, ious, -np.inf))
      best_ign = _last_argmax(np.where(cand & ign_b, ious, -np.inf))
      choice = np.where(best_reg >= 0, best_reg, best_ign)
      hit = choice >= 0
    else:
      top = np.argmax(iou[:, d, :], axis=-1)  # the first maximum, as the devkit's max()
      hit = np.broadcast_to(iou[rows, d, top][None, None] > thr[..., 0], (num_s, num_t, c))
      choice = np.broadcast_to(top, (num_s, num_t, c))
    choice = np.maximum(choice, 0)
    s_i, t_i, c_i = np.indices(choice.shape, sparse=True)
    det_ign = ign[s_i, c_i, choice] & hit
    if rule == "coco":
      det_match = take = hit  # an ignored ground truth is taken too (pycocotools' gtm)
    else:
      det_match = take = hit & ~det_ign & ~taken[s_i, t_i, c_i, choice]
    taken[s_i, t_i, c_i, choice] |= take & live[None, None]
    out = det_idx[:, d]
    matched[:, :, out[live]] = det_match[..., live]
    ignored[:, :, out[live]] = det_ign[..., live]
  gt_matched[:, :, gt_idx[gt_ok]] = taken[..., gt_ok]


def _last_argmax(x: np.ndarray) -> np.ndarray:
  """Index of the last maximum along the last axis, or -1 where every entry is -inf."""
  rev = x[..., ::-1]
  idx = x.shape[-1] - 1 - np.argmax(rev, axis=-1)
  return np.where(np.isneginf(np.max(x, axis=-1)), -1, idx)
