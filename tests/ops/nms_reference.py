"""Independent references for the NMS-family tests: NumPy transcriptions of the papers' loops, and a memory probe."""

from __future__ import annotations

import jax
from jax.extend import core as jax_core
import numpy as np


def iou_np(a, b):
  """float64 IoU of two xyxy boxes; 0 for empty boxes."""
  if not (a[2] > a[0] and a[3] > a[1] and b[2] > b[0] and b[3] > b[1]):
    return 0.0
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def iou_f32(box, boxes):
  """float32 `[N]` IoU of one box with `boxes [N, 4]`, in torchvision's `nms` kernel arithmetic; 0 if degenerate."""
  box, boxes = np.float32(box), np.asarray(boxes, np.float32)
  area = (box[2] - box[0]) * (box[3] - box[1])
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  w = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), np.float32(0))
  h = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), np.float32(0))
  inter = w * h
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = inter / (area + areas - inter)
  ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (box[2] > box[0]) & (box[3] > box[1])
  return np.where(ok, iou, np.float32(0))


def greedy_nms(boxes, scores, thr, classes=None, score_threshold=None):
  """Kept indices of greedy NMS, written as torchvision's C++ loop.

  Visit boxes by descending score (stable), keep a box unless already suppressed, then suppress every later box
  whose float32 IoU with it is above `thr` (compared in float64, as the C++ kernel does), within its class when
  `classes` is given. Boxes or scores that are not finite (and scores <= `score_threshold`) are never kept.
  """
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  classes = None if classes is None else np.asarray(classes)
  ok = np.isfinite(scores) & np.all(np.isfinite(boxes), axis=1)
  if score_threshold is not None:
    ok &= scores > score_threshold
  candidates = np.flatnonzero(ok)
  order = candidates[np.argsort(-scores[candidates], kind="stable")]
  suppressed = np.zeros(len(order), bool)
  ordered = boxes[order]
  keep = []
  for pos, i in enumerate(order):
    if suppressed[pos]:
      continue
    keep.append(int(i))
    hit = iou_f32(boxes[i], ordered[pos + 1:]).astype(np.float64) > thr
    if classes is not None:
      hit &= classes[order[pos + 1:]] == classes[i]
    suppressed[pos + 1:] |= hit
  return keep


def offset_trick_nms(boxes, scores, classes, thr):
  """Class-aware NMS by torchvision's coordinate trick: shift class c by c * (max coordinate + 1), in float32."""
  boxes = np.asarray(boxes, np.float32)
  offsets = np.asarray(classes).astype(np.float32) * (boxes.max() + np.float32(1))
  return greedy_nms(boxes + offsets[:, None], scores, thr)


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


def detector_boxes(rng, n, num_objects=10, size=400.0, background=0.2):
  """`([N, 4], [N])`: boxes jittered around a few objects (most suppressed by NMS) plus random background boxes."""
  wh = rng.uniform(20, 120, (num_objects, 2))
  xy = rng.uniform(0, size - 120, (num_objects, 2))
  src = rng.integers(0, num_objects, n)
  jitter = rng.normal(0, 0.1, (n, 4)) * np.concatenate([wh[src], wh[src]], axis=1)
  boxes = np.concatenate([xy, xy + wh], axis=1)[src] + jitter
  noise = rng.uniform(size=n) < background
  boxes[noise] = random_boxes(rng, n, size)[noise]
  boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
  return boxes.astype(np.float32), rng.uniform(size=n).astype(np.float32)


def _avals(jaxpr):
  for eqn in jaxpr.eqns:
    yield from (v.aval for v in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, jax_core.ClosedJaxpr):
          yield from _avals(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          yield from _avals(sub)


def largest_intermediate_bytes(fn, *shapes):
  """Bytes of the largest array any equation of `fn`'s jaxpr (loop and branch bodies included) produces.

  Traced from `jax.ShapeDtypeStruct`s, so a 20,000-box program is inspected without being run.
  """
  jaxpr = jax.make_jaxpr(fn)(*shapes).jaxpr
  return max(int(np.prod(a.shape)) * a.dtype.itemsize for a in _avals(jaxpr) if hasattr(a, "shape"))


def compiled_temp_bytes(fn, *shapes):
  """Temporary buffer bytes of `fn` compiled for `shapes` (XLA's memory analysis), without running it."""
  return jax.jit(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes
