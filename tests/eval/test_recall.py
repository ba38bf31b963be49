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


def test_bad_proposal_is_named():
  gt, dets = make_coco_set(5, num_images=5)
  dets[2]["bbox"] = [0, 0, -1, 4]
  with pytest.raises(ValueError, match="proposal #2"):
    proposal_recall(gt, dets)
