"""COCO evaluation: parity with pycocotools on generated sets with every real-data case, and bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from jaxdet.eval.coco import STAT_KEYS, coco_evaluate, evaluate_coco, format_summary

pytest.importorskip("pycocotools")
from tests.eval.conftest import make_coco_set, pycocotools_eval  # pylint: disable=g-import-not-at-top


def _assert_equal_to_pycocotools(gt, dets):
  ours = evaluate_coco(gt, dets)
  ref = pycocotools_eval(gt, dets)
  np.testing.assert_allclose([ours.stats[k] for k in STAT_KEYS], ref.stats, atol=1e-6, rtol=0)
  np.testing.assert_allclose(ours.precision, ref.eval["precision"], atol=1e-6, rtol=0)
  np.testing.assert_allclose(ours.recall, ref.eval["recall"], atol=1e-6, rtol=0)
  np.testing.assert_allclose(ours.scores, ref.eval["scores"], atol=1e-6, rtol=0)
  return ours, ref


@pytest.mark.parametrize("seed", range(6))
def test_equal_to_pycocotools_on_generated_sets(seed):
  gt, dets = make_coco_set(seed)
  _assert_equal_to_pycocotools(gt, dets)


@pytest.mark.parametrize("case", ["crowd_heavy", "all_ties", "few_gt_many_dets", "no_empties"])
def test_equal_to_pycocotools_on_stress_cases(case):
  kwargs = {"crowd_heavy": dict(crowd_rate=0.5), "all_ties": dict(tie_rate=1.0),
            "few_gt_many_dets": dict(max_gt=2, max_dets=150), "no_empties": dict(empty_rate=0.0)}[case]
  gt, dets = make_coco_set(100, num_images=30, **kwargs)
  _assert_equal_to_pycocotools(gt, dets)


def test_generated_set_covers_the_cases():
  gt, dets = make_coco_set(0)
  anns = gt["annotations"]
  assert any(a["iscrowd"] for a in anns)
  assert any(a["area"] in (32.0**2, 96.0**2) for a in anns)  # area exactly on a range bound
  gt_images = {a["image_id"] for a in anns}
  det_images = {d["image_id"] for d in dets}
  assert {im["id"] for im in gt["images"]} - gt_images  # images without ground truth
  assert gt_images - det_images  # images without detections
  assert det_images - gt_images  # detections on images without ground truth
  assert gt["categories"][-1]["id"] not in {a["category_id"] for a in anns}  # a category never seen
  counts = {}
  for d in dets:
    counts[d["image_id"], d["category_id"]] = counts.get((d["image_id"], d["category_id"]), 0) + 1
  assert max(counts.values()) > 100
  scores = [d["score"] for d in dets]
  assert len(set(scores)) < len(scores)  # score ties


def test_no_detections_and_unseen_categories_give_pycocotools_numbers():
  gt, _ = make_coco_set(3, num_images=10)
  ours = evaluate_coco(gt, [])
  assert ours.stats["AP"] == 0.0
  assert ours.per_category_ap[gt["categories"][-1]["id"]] == -1.0
  np.testing.assert_allclose([ours.stats[k] for k in STAT_KEYS], pycocotools_eval(gt, []).stats, atol=1e-12)


def test_per_category_ap_matches_pycocotools_precision_slices():
  gt, dets = make_coco_set(7)
  ours, ref = _assert_equal_to_pycocotools(gt, dets)
  for k, cat_id in enumerate(sorted(c["id"] for c in gt["categories"])):
    p = ref.eval["precision"][:, :, k, 0, -1]
    want = float(np.mean(p[p > -1])) if np.any(p > -1) else -1.0
    assert ours.per_category_ap[cat_id] == pytest.approx(want, abs=1e-12)


def test_perfect_detections_give_ap_one():
  gt, _ = make_coco_set(11, num_images=10, crowd_rate=0.0)
  dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
          for a in gt["annotations"]]
  stats = coco_evaluate(gt, dets)
  assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_input_order_of_detections_does_not_matter_without_ties():
  gt, dets = make_coco_set(2, tie_rate=0.0)
  shuffled = copy.deepcopy(dets)
  np.random.default_rng(0).shuffle(shuffled)
  assert coco_evaluate(gt, dets) == coco_evaluate(gt, shuffled)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(image_id=-5), "image_id that is not in the ground truth"),
    (lambda d: d.update(category_id=999), "category_id that is not in the ground truth"),
    (lambda d: d.update(bbox=[1.0, 2.0, 0.0, 3.0]), "w or h <= 0"),
    (lambda d: d.update(bbox=[1.0, float("nan"), 2.0, 3.0]), "non-finite bbox"),
    (lambda d: d.update(score=float("nan")), "non-finite score"),
    (lambda d: d.pop("score"), "missing field"),
])
def test_bad_detections_raise_an_error_naming_the_entry(mutate, message):
  gt, dets = make_coco_set(1, num_images=5)
  mutate(dets[3])
  with pytest.raises(ValueError, match=message) as err:
    coco_evaluate(gt, dets)
  assert "#3" in str(err.value)


def test_bad_ground_truth_raises():
  gt, dets = make_coco_set(1, num_images=5)
  bad = copy.deepcopy(gt)
  del bad["annotations"][2]["area"]
  with pytest.raises(ValueError, match="annotation #2 is missing"):
    coco_evaluate(bad, dets)
  dup = copy.deepcopy(gt)
  dup["annotations"][1]["id"] = dup["annotations"][0]["id"]
  with pytest.raises(ValueError, match="not unique"):
    coco_evaluate(dup, dets)
  orphan = copy.deepcopy(gt)
  orphan["annotations"][0]["image_id"] = 123456
  with pytest.raises(ValueError, match="not in the ground truth's images"):
    coco_evaluate(orphan, dets)


def test_summary_has_the_pycocotools_layout():
  gt, dets = make_coco_set(4, num_images=10)
  text = format_summary(coco_evaluate(gt, dets))
  lines = text.splitlines()
  assert len(lines) == 12
  assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
  assert lines[6].startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = ")
