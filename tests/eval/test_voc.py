"""VOC AP against a loop transcription of the devkit's voc_eval (continuous boxes, stable score order)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdet.eval.voc import voc_ap, voc_evaluate
from tests.eval.conftest import make_coco_set


def _devkit_voc_eval(gt, dets, cat_id, thresh=0.5, use_07=False):
  """py-faster-rcnn's voc_eval, transcribed with loops; no +1 in widths, stable sort on ties."""
  recs = {}
  for a in gt["annotations"]:
    if a["category_id"] != cat_id:
      continue
    x, y, w, h = a["bbox"]
    r = recs.setdefault(a["image_id"], {"bbox": [], "difficult": [], "det": []})
    r["bbox"].append([x, y, x + w, y + h])
    r["difficult"].append(bool(a.get("difficult", 0)) or bool(a.get("iscrowd", 0)))
    r["det"].append(False)
  npos = sum(not d for r in recs.values() for d in r["difficult"])
  mine = [d for d in dets if d["category_id"] == cat_id]
  order = sorted(range(len(mine)), key=lambda i: -mine[i]["score"])  # Python's sort is stable
  tp, fp = np.zeros(len(mine)), np.zeros(len(mine))
  for rank, i in enumerate(order):
    d = mine[i]
    x, y, w, h = d["bbox"]
    bb = [x, y, x + w, y + h]
    r = recs.get(d["image_id"], {"bbox": [], "difficult": [], "det": []})
    ovmax, jmax = -np.inf, -1
    for j, g in enumerate(r["bbox"]):
      iw = max(min(bb[2], g[2]) - max(bb[0], g[0]), 0.0)
      ih = max(min(bb[3], g[3]) - max(bb[1], g[1]), 0.0)
      inter = iw * ih
      uni = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
      ov = inter / uni
      if ov > ovmax:
        ovmax, jmax = ov, j
    if ovmax > thresh:
      if not r["difficult"][jmax]:
        if not r["det"][jmax]:
          tp[rank] = 1
          r["det"][jmax] = True
        else:
          fp[rank] = 1
    else:
      fp[rank] = 1
  if npos == 0:
    return float("nan")
  fp, tp = np.cumsum(fp), np.cumsum(tp)
  rec = tp / npos
  prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
  if use_07:
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
      p = 0.0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
      ap += p / 11.0
    return ap
  mrec = np.concatenate(([0.0], rec, [1.0]))
  mpre = np.concatenate(([0.0], prec, [0.0]))
  for i in range(mpre.size - 1, 0, -1):
    mpre[i - 1] = max(mpre[i - 1], mpre[i])
  i = np.where(mrec[1:] != mrec[:-1])[0]
  return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@pytest.mark.parametrize("use_07", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_devkit_transcription(seed, use_07):
  gt, dets = make_coco_set(seed, difficult_rate=0.15, num_images=40)
  ours = voc_evaluate(gt, dets, use_07_metric=use_07)
  for cat in gt["categories"]:
    want = _devkit_voc_eval(gt, dets, cat["id"], use_07=use_07)
    got = ours["AP"][cat["id"]]
    if np.isnan(want):
      assert np.isnan(got)
    else:
      assert got == pytest.approx(want, abs=1e-12), cat["id"]
  defined = [v for v in ours["AP"].values() if not np.isnan(v)]
  assert ours["mAP"] == pytest.approx(np.mean(defined))


def test_difficult_objects_are_neither_true_nor_false_positives():
  gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 100,
                         "difficult": 1}]}
  dets = [{"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8}]
  assert voc_evaluate(gt, dets)["AP"][1] == pytest.approx(1.0)


def test_duplicate_detection_of_a_matched_object_is_a_false_positive():
  gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10], "area": 100}]}
  # The second detection's best ground truth (id 1) is taken: a false positive, even though id 2 overlaps > 0.5.
  dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [0.5, 0, 10, 10], "score": 0.8}]
  result = voc_evaluate(gt, dets)
  recall, precision = result["curves"][1]
  np.testing.assert_allclose(recall, [0.5, 0.5])
  np.testing.assert_allclose(precision, [1.0, 0.5])


def test_voc_ap_on_known_curves():
  assert voc_ap(np.array([1.0]), np.array([1.0])) == pytest.approx(1.0)
  assert voc_ap(np.array([0.5, 0.5]), np.array([1.0, 0.5])) == pytest.approx(0.5)
  assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), use_07_metric=True) == pytest.approx((6 + 5 * 0.5) / 11)


def test_iou_of_exactly_one_half_is_not_a_match_and_ties_go_to_the_first_object():
  anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10], "area": 100},
          {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100}]
  gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}], "annotations": anns}
  dets = [{"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},   # IoU 0.82 with both: takes #1
          {"image_id": 1, "category_id": 1, "bbox": [-1, 0, 10, 10], "score": 0.8},  # best is #1, taken: FP
          {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 5], "score": 0.7}]    # IoU exactly 0.5: FP
  recall, precision = voc_evaluate(gt, dets)["curves"][1]
  np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 1 / 3])
  np.testing.assert_allclose(precision, [1.0, 0.5, 1 / 3])
  for cat in gt["categories"]:
    assert voc_evaluate(gt, dets)["AP"][cat["id"]] == pytest.approx(_devkit_voc_eval(gt, dets, cat["id"]), abs=1e-12)
