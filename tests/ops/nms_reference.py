"""NumPy loop transcriptions of the NMS-family algorithms, used as independent references by the tests."""

from __future__ import annotations

import numpy as np


def iou_np(a, b):
  """float64 IoU of two xyxy boxes; 0 for empty boxes."""
  if not (a[2] > a[0] and a[3] > a[1] and b[2] > b[0] and b[3] > b[1]):
    return 0.0
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def greedy_nms(boxes, scores, thr, classes=None):
  """Greedy NMS in descending score order (ties: lower index first), suppress when IoU > thr."""
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  keep = []
  for i in order:
    if all(iou_np(boxes[i], boxes[j]) <= thr or (classes is not None and classes[i] != classes[j]) for j in keep):
      keep.append(i)
  return keep


def soft_nms_np(boxes, scores, method, sigma, nt, thr):
  s = np.array(scores, np.float64)
  alive = [i for i in range(len(s)) if s[i] >= thr]
  out_idx, out_score = [], []
  while alive:
    m = max(alive, key=lambda i: (s[i], -i))
    out_idx.append(m)
    out_score.append(s[m])
    alive.remove(m)
    for i in list(alive):
      ov = iou_np(boxes[m], boxes[i])
      if method == "linear":
        s[i] *= (1 - ov) if ov >= nt else 1.0
      else:
        s[i] *= np.exp(-ov * ov / sigma)
      if s[i] < thr:
        alive.remove(i)
  return out_idx, out_score


def iou_guided_np(boxes, scores, loc, thr):
  remaining = list(range(len(scores)))
  out_idx, out_score = [], []
  while remaining:
    m = max(remaining, key=lambda i: (loc[i], -i))
    best = scores[m]
    for j in list(remaining):
      if j == m or iou_np(boxes[m], boxes[j]) > thr:
        best = max(best, scores[j])
        remaining.remove(j)
    out_idx.append(m)
    out_score.append(best)
  return out_idx, out_score


def random_boxes(rng, n, size=200.0, max_wh=60.0):
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(2, max_wh, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
