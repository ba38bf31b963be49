"""Proposal recall against pycocotools run class-agnostic (useCats=0) with maxDets 1/10/100/1000."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest

from jaxdet.eval.recall import proposal_recall
from tests.eval.conftest import make_coco_set

pytest.importorskip("pycocotools")


def _pycocotools_recall(gt, props, max_dets):
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes([dict(p, category_id=gt["categories"][0]["id"]) for p in props])
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    ev.params.useCats = 0
    ev.params.maxDets = list(max_dets)
    ev.evaluate()
    ev.accumulate()
  return ev.eval["recall"][:, 0, 0, :]  # [T, M], area "all"


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_pycocotools_class_agnostic(seed):
  gt, dets = make_coco_set(seed, num_images=30, max_dets=150)
  props = [{k: d[k] for k in ("image_id", "bbox", "score")} for d in dets]
  ours = proposal_recall(gt, props)
  want = _pycocotools_recall(gt, props, (1, 10, 100, 1000))
  np.testing.assert_allclose(ours["recall"], want, atol=1e-12)
  for j, k in enumerate((1, 10, 100, 1000)):
    assert ours[f"AR@{k}"] == pytest.approx(want[:, j].mean(), abs=1e-12)


def test_recall_curve_decreases_with_iou_and_grows_with_proposals():
  gt, dets = make_coco_set(5, num_images=20)
  out = proposal_recall(gt, dets, iou_thresholds=np.linspace(0.5, 0.95, 10))
  assert np.all(np.diff(out["recall"], axis=0) <= 1e-12)
  assert np.all(np.diff(out["recall"], axis=1) >= -1e-12)


def test_only_crowd_ground_truth_gives_minus_one_as_pycocotools():
  gt, dets = make_coco_set(9, num_images=8)
  for a in gt["annotations"]:
    a["iscrowd"] = 1
  props = [{k: d[k] for k in ("image_id", "bbox", "score")} for d in dets]
  ours = proposal_recall(gt, props)
  np.testing.assert_array_equal(ours["recall"], _pycocotools_recall(gt, props, (1, 10, 100, 1000)))
  assert ours["AR@100"] == -1.0


def test_hand_computed_recall_curve():
  gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 100}]}
  # IoU 0.81 with the first object (score 0.9); IoU 0.6 with the second (score 0.8).
  props = [{"image_id": 1, "bbox": [0, 0, 10, 8.1], "score": 0.9},
           {"image_id": 1, "bbox": [50, 50, 10, 6], "score": 0.8}]
  out = proposal_recall(gt, props, max_proposals=(1, 2), iou_thresholds=[0.5, 0.6, 0.7, 0.85])
  np.testing.assert_allclose(out["recall"], [[0.5, 1.0], [0.5, 1.0], [0.5, 0.5], [0.0, 0.0]])
  assert out["AR@2"] == pytest.approx(0.625)


@pytest.mark.parametrize("mutate,message", [
    (lambda p: p.update(bbox=[0, 0, -1, 4]), "w or h <= 0"),
    (lambda p: p.update(bbox=[0, 0, float("nan"), 4]), "non-finite bbox"),
    (lambda p: p.update(score=float("nan")), "non-finite score"),
    (lambda p: p.update(image_id=-7), "image_id that is not in the ground truth"),
    (lambda p: p.pop("score"), r"missing field\(s\) \['score'\]"),
])
def test_bad_proposal_is_named(mutate, message):
  gt, dets = make_coco_set(5, num_images=5)
  mutate(dets[2])
  with pytest.raises(ValueError, match=message) as err:
    proposal_recall(gt, dets)
  assert "proposal #2" in str(err.value)
