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


def _edge_case_set():
  """A hand-built set with one instance of each case pycocotools treats specially (ids deliberately sparse)."""
  images = [{"id": i} for i in (10, 20, 30, 40, 50)]
  cats = [{"id": 5, "name": "five"}, {"id": 9, "name": "never seen"}, {"id": 17, "name": "seventeen"}]
  anns = [
      # A crowd region and a regular object of the same category in image 10.
      {"id": 1, "image_id": 10, "category_id": 5, "bbox": [0, 0, 100, 100], "area": 10_000.0, "iscrowd": 1},
      {"id": 2, "image_id": 10, "category_id": 5, "bbox": [200, 200, 50, 50], "area": 2_500.0, "iscrowd": 0},
      # Areas exactly on the small/medium and medium/large bounds (both ranges include them).
      {"id": 3, "image_id": 20, "category_id": 17, "bbox": [0, 0, 32, 32], "area": 32.0**2, "iscrowd": 0},
      {"id": 4, "image_id": 20, "category_id": 17, "bbox": [100, 100, 96, 96], "area": 96.0**2, "iscrowd": 0},
      # Two identical objects: the detection's IoU ties, pycocotools takes the later one.
      {"id": 5, "image_id": 20, "category_id": 5, "bbox": [300, 10, 40, 40], "area": 1_600.0, "iscrowd": 0},
      {"id": 6, "image_id": 20, "category_id": 5, "bbox": [300, 10, 40, 40], "area": 1_600.0, "iscrowd": 0},
      # An empty box, which pycocotools keeps as an object nothing can match.
      {"id": 7, "image_id": 20, "category_id": 17, "bbox": [400, 400, 0, 12], "area": 0.0, "iscrowd": 0},
      # Ground truth on an image without detections.
      {"id": 8, "image_id": 30, "category_id": 17, "bbox": [5, 5, 60, 40], "area": 2_000.0, "iscrowd": 0},
      # A tie whose outcome matters: the first detection overlaps both equally (IoU 0.82) and must take the later
      # one, so that the second detection (IoU 0.82 with the first object, 0.54 with the second) can take the first.
      {"id": 9, "image_id": 50, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
      {"id": 10, "image_id": 50, "category_id": 5, "bbox": [2, 0, 10, 10], "area": 100.0, "iscrowd": 0},
  ]
  dets = [
      # Three detections inside the crowd region: each matches it (IoU over the detection's area is 1), ignored.
      {"image_id": 10, "category_id": 5, "bbox": [10, 10, 20, 20], "score": 0.9},
      {"image_id": 10, "category_id": 5, "bbox": [30, 30, 20, 20], "score": 0.8},
      {"image_id": 10, "category_id": 5, "bbox": [60, 60, 30, 30], "score": 0.5},
      # A true positive, then a duplicate of it that a crowd region cannot absorb: a false positive.
      {"image_id": 10, "category_id": 5, "bbox": [201, 201, 50, 50], "score": 0.7},
      {"image_id": 10, "category_id": 5, "bbox": [199, 202, 50, 50], "score": 0.5},
      # Score ties across images (0.5 above) and within an image.
      {"image_id": 20, "category_id": 17, "bbox": [0, 0, 32, 31], "score": 0.5},
      {"image_id": 20, "category_id": 17, "bbox": [101, 99, 96, 96], "score": 0.5},
      {"image_id": 20, "category_id": 5, "bbox": [301, 10, 40, 40], "score": 0.6},
      # An unmatched detection of area exactly 32^2, so ignored or not per range by the inclusive bounds.
      {"image_id": 20, "category_id": 17, "bbox": [500, 300, 32, 32], "score": 0.95},
      {"image_id": 50, "category_id": 5, "bbox": [1, 0, 10, 10], "score": 0.9},
      {"image_id": 50, "category_id": 5, "bbox": [-1, 0, 10, 10], "score": 0.8},
      # A false positive on an image without ground truth, tied with the true positives of image 20 (0.5): in
      # pycocotools' order (image ids ascending, then stable by score) it comes after them.
      {"image_id": 40, "category_id": 17, "bbox": [0, 0, 10, 10], "score": 0.5},
  ]
  # More than maxDets = 100 detections of one (image, category), with ties, the true positive ranked 101st.
  for k in range(105):
    dets.append({"image_id": 30, "category_id": 17, "bbox": [300.0 + k, 200, 20, 20], "score": 0.99 - 0.001 * (k // 3)})
  dets.append({"image_id": 30, "category_id": 17, "bbox": [5, 5, 60, 40], "score": 0.99 - 0.001 * 34})
  return {"images": images, "annotations": anns, "categories": cats}, dets


def test_equal_to_pycocotools_on_hand_built_edge_cases():
  gt, dets = _edge_case_set()
  ours, _ = _assert_equal_to_pycocotools(gt, dets)
  assert ours.per_category_ap[9] == -1.0  # never seen: undefined, not 0
  assert ours.stats["AP"] > 0  # the set is not trivially all-zero


@pytest.mark.parametrize("seed", [0, 1])
def test_equal_to_pycocotools_with_empty_ground_truth_boxes(seed):
  gt, dets = make_coco_set(seed, num_images=20)
  for a in gt["annotations"][::7]:
    a["bbox"][2 + seed] = 0.0 if seed == 0 else -3.0  # w = 0, or h < 0: kept as unmatchable objects
  _assert_equal_to_pycocotools(gt, dets)


def test_integral_float_ids_are_accepted():
  gt, dets = make_coco_set(6, num_images=10)
  as_floats = [dict(d, image_id=float(d["image_id"]), category_id=float(d["category_id"])) for d in dets]
  assert coco_evaluate(gt, as_floats) == coco_evaluate(gt, dets)


def test_summary_text_is_what_pycocotools_prints():
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  gt, dets = make_coco_set(8, num_images=15)
  ev = pycocotools_eval(gt, dets)
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    ev.summarize()
  assert format_summary(coco_evaluate(gt, dets)) == printed.getvalue().rstrip("\n")


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("bbox"), r"missing field\(s\) \['bbox'\]"),
    (lambda d: d.pop("image_id"), r"missing field\(s\) \['image_id'\]"),
    (lambda d: d.pop("category_id"), r"missing field\(s\) \['category_id'\]"),
    (lambda d: d.update(bbox=[1.0, 2.0, 3.0]), r"not \[x, y, w, h\]"),
    (lambda d: d.update(bbox=None), r"not \[x, y, w, h\]"),
    (lambda d: d.update(bbox=[1.0, 2.0, -4.0, 3.0]), "w or h <= 0"),
    (lambda d: d.update(bbox=[1.0, 2.0, float("inf"), 3.0]), "non-finite bbox"),
    (lambda d: d.update(score=float("inf")), "non-finite score"),
    (lambda d: d.update(score=[0.5]), "not a number"),
    (lambda d: d.update(image_id=2.5), "not an integer"),
    (lambda d: d.update(category_id="cat"), "not an integer"),
])
def test_more_bad_detections_name_the_entry(mutate, message):
  gt, dets = make_coco_set(1, num_images=5)
  mutate(dets[4])
  with pytest.raises(ValueError, match=message) as err:
    coco_evaluate(gt, dets)
  assert "detection #4" in str(err.value)


@pytest.mark.parametrize("mutate,message", [
    (lambda g: g["annotations"][3].update(bbox=[1.0, float("nan"), 2.0, 3.0]), "annotation #3 has a non-finite bbox"),
    (lambda g: g["annotations"][3].update(area=float("nan")), "annotation #3 has a non-finite area"),
    (lambda g: g["annotations"][3].update(bbox=[1.0, 2.0]), r"annotation #3 has bbox .* not \[x, y, w, h\]"),
    (lambda g: g["annotations"][3].update(id=0), "annotation #3 has id 0"),
    (lambda g: g["annotations"][3].update(category_id=4242), "annotation #3 has a category_id that is not"),
    (lambda g: g["images"][1].pop("id"), r"image #1 is missing field\(s\) \['id'\]"),
    (lambda g: g["categories"][0].pop("id"), r"category #0 is missing field\(s\) \['id'\]"),
    (lambda g: g.pop("categories"), "no 'categories' list"),
])
def test_bad_ground_truth_names_the_entry(mutate, message):
  gt, dets = make_coco_set(1, num_images=5)
  mutate(gt)
  with pytest.raises(ValueError, match=message):
    coco_evaluate(gt, dets)
