"""Generators of COCO-format ground truth and results with every case real data has."""

from __future__ import annotations

import numpy as np
import pytest


def make_coco_set(seed: int, *, num_images: int = 60, category_ids=(1, 3, 7, 12), max_gt: int = 12,
                  max_dets: int = 40, crowd_rate: float = 0.08, empty_rate: float = 0.1, tie_rate: float = 0.2,
                  difficult_rate: float = 0.0):
  """Returns `(ground_truth, detections)`: noisy detections of random boxes, with crowds, ties and empties.

  Boxes are snapped to a 0.5 px grid so exact IoU ties occur; some images have no ground truth, some no
  detections; one category never appears; some images get more than 100 detections of a category.
  """
  rng = np.random.default_rng(seed)
  images = [{"id": int(i), "width": 640, "height": 480} for i in rng.choice(10_000, num_images, replace=False) + 1]
  cats = [{"id": int(c), "name": f"c{c}"} for c in category_ids]
  used_cats = category_ids[:-1]  # the last category never appears
  anns, dets = [], []
  ann_id = 1
  for im in images:
    n_gt = 0 if rng.uniform() < empty_rate else int(rng.integers(1, max_gt + 1))
    gts = []
    for _ in range(n_gt):
      w, h = np.round(np.exp(rng.uniform(np.log(4), np.log(300), 2)) * 2) / 2
      x, y = np.round(rng.uniform(0, [640 - w, 480 - h]) * 2) / 2
      cat = int(rng.choice(used_cats))
      crowd = int(rng.uniform() < crowd_rate)
      # The area field differs from w*h as for polygons, and sometimes sits exactly on a range bound.
      area = float(w * h * rng.uniform(0.6, 1.0)) if rng.uniform() > 0.1 else float(rng.choice([32.0**2, 96.0**2]))
      ann = {"id": ann_id, "image_id": im["id"], "category_id": cat, "bbox": [float(x), float(y), float(w), float(h)],
             "area": area, "iscrowd": crowd}
      if difficult_rate:
        ann["difficult"] = int(rng.uniform() < difficult_rate)
      anns.append(ann)
      gts.append(ann)
      ann_id += 1
      if rng.uniform() < 0.05:  # an exact duplicate box: IoU ties between two ground truths
        dup = dict(ann, id=ann_id)
        anns.append(dup)
        gts.append(dup)
        ann_id += 1
    if rng.uniform() < empty_rate:
      continue
    n_det = int(rng.integers(0, max_dets + 1))
    crowded = rng.uniform() < 0.05
    if crowded:
      n_det = 130  # more than maxDets for one category
    for _ in range(n_det):
      if gts and rng.uniform() < 0.7:
        g = gts[int(rng.integers(len(gts)))]
        x, y, w, h = g["bbox"]
        jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
        box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
        if rng.uniform() < 0.3:
          box = list(np.round(np.array(box) * 2) / 2)
        cat = g["category_id"] if rng.uniform() < 0.9 else int(rng.choice(used_cats))
      else:
        w, h = np.exp(rng.uniform(np.log(4), np.log(300), 2))
        box = [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), float(w), float(h)]
        cat = int(rng.choice(used_cats))
      if crowded:
        cat = used_cats[0]
      score = float(np.round(rng.uniform(), 1)) if rng.uniform() < tie_rate else float(rng.uniform())
      dets.append({"image_id": im["id"], "category_id": cat, "bbox": [float(v) for v in box], "score": score})
  rng.shuffle(dets)
  return {"images": images, "annotations": anns, "categories": cats}, dets


@pytest.fixture
def coco_set():
  return make_coco_set


def pycocotools_eval(ground_truth, detections):
  """Runs pycocotools' COCOeval and returns the evaluator (after summarize)."""
  import contextlib
  import copy
  import io

  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(ground_truth)
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(copy.deepcopy(detections)) if detections else COCO()
    if not detections:
      coco_dt.dataset = {"images": ground_truth["images"], "annotations": [], "categories": ground_truth["categories"]}
      coco_dt.createIndex()
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return ev
