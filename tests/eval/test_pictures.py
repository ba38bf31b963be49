"""Pictures of an evaluation: which detections are false positives and which objects were missed (COCO's greedy
matching at IoU 0.5, checked against a NumPy transcription), and that the picture marks exactly those."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdet.data.visualize import MARK_COLOR, class_color
from jaxdet.eval.pictures import PictureInput, detection_grid, detection_picture, match_outcomes

# One image: a true positive (class 0), a false positive (class 1, nothing there), a missed object (class 2).
GT_BOXES = np.array([[4, 4, 20, 20], [36, 36, 56, 56]], np.float32)
GT_LABELS = np.array([0, 2])
DET_BOXES = np.array([[5, 4, 20, 21], [30, 4, 46, 20], [0, 0, 0, 0]], np.float32)
DET_SCORES = np.array([0.9, 0.6, 0.0])
DET_CLASSES = np.array([0, 1, 0])
DET_VALID = np.array([True, True, False])


def item(**changes):
  fields = dict(image=np.full((64, 64, 3), 90, np.uint8), image_id=7, boxes=DET_BOXES, scores=DET_SCORES,
                classes=DET_CLASSES, valid=DET_VALID, gt_boxes=GT_BOXES, gt_labels=GT_LABELS,
                gt_crowd=np.zeros(2, bool))
  fields.update(changes)
  return PictureInput(**fields)


def test_one_true_positive_one_false_positive_one_miss():
  out = match_outcomes(DET_BOXES, DET_SCORES, DET_CLASSES, DET_VALID, GT_BOXES, GT_LABELS, [True, True])
  np.testing.assert_array_equal(out.true_positive, [True, False, False])
  np.testing.assert_array_equal(out.false_positive, [False, True, False])  # the padded slot is neither
  np.testing.assert_array_equal(out.missed, [False, True])


def test_duplicates_wrong_classes_and_crowd_regions():
  gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
  dets = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 40, 40], [22, 22, 38, 38]], np.float32)
  out = match_outcomes(dets, [0.5, 0.9, 0.8, 0.7], [0, 0, 1, 3], [True] * 4, gt, [0, 3], [True, True],
                       [False, True])
  # The higher-scored of two detections of one object takes it; the other is a duplicate, a false positive.
  np.testing.assert_array_equal(out.true_positive, [False, True, False, False])
  # A detection of the wrong class is false; one inside a crowd region of its class is neither true nor false.
  np.testing.assert_array_equal(out.false_positive, [True, False, True, False])
  np.testing.assert_array_equal(out.missed, [False, False])  # a crowd region is never "missed"


def test_detections_below_the_threshold_are_not_matched():
  valid = DET_VALID & (DET_SCORES > 0.95)
  out = match_outcomes(DET_BOXES, DET_SCORES, DET_CLASSES, valid, GT_BOXES, GT_LABELS, [True, True])
  assert not out.true_positive.any() and not out.false_positive.any()
  np.testing.assert_array_equal(out.missed, [True, True])


def iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
  return w * h / union if union > 0 else 0.0


def greedy_reference(boxes, scores, classes, gt_boxes, gt_labels, threshold=0.5):
  """COCO's per-image greedy matching without crowd regions, transcribed loop by loop."""
  tp = np.zeros(len(boxes), bool)
  taken = np.zeros(len(gt_boxes), bool)
  for d in sorted(range(len(boxes)), key=lambda d: -scores[d]):
    best, best_iou = -1, threshold
    for g in range(len(gt_boxes)):
      if taken[g] or gt_labels[g] != classes[d]:
        continue
      value = iou(boxes[d], gt_boxes[g])
      if value >= best_iou:
        best, best_iou = g, value
    if best >= 0:
      tp[d], taken[best] = True, True
  return tp, ~taken


box = st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(2, 20), st.integers(2, 20))


@given(st.lists(st.tuples(box, st.integers(0, 1)), max_size=8), st.lists(st.tuples(box, st.integers(0, 1)),
                                                                          max_size=6), st.randoms())
def test_matching_agrees_with_a_greedy_transcription(dets, gts, random):
  def xyxy(spec):
    return np.array([[x, y, x + w, y + h] for (x, y, w, h), _ in spec], np.float64).reshape(-1, 4)

  boxes, gt_boxes = xyxy(dets), xyxy(gts)
  boxes = boxes + np.array([[random.random() * 0.1 for _ in range(4)] for _ in range(len(boxes))]).reshape(-1, 4)
  classes, gt_labels = np.array([c for _, c in dets], int), np.array([c for _, c in gts], int)
  scores = np.array([random.random() for _ in dets])
  out = match_outcomes(boxes, scores, classes, np.ones(len(boxes), bool), gt_boxes, gt_labels,
                       np.ones(len(gt_boxes), bool))
  tp, missed = greedy_reference(boxes, scores, classes, gt_boxes, gt_labels)
  np.testing.assert_array_equal(out.true_positive, tp)
  np.testing.assert_array_equal(out.false_positive, ~tp)
  np.testing.assert_array_equal(out.missed, missed)


def picture_part(picture, scale=8):
  return picture[-64 * scale:]  # the drawn image sits under the caption strip


def test_picture_marks_the_false_positive_and_the_miss_only():
  pic = picture_part(detection_picture(item(), class_names=["a", "b", "c"], scale=8))
  red = (pic == MARK_COLOR).all(-1)
  fp_centre = (12 * 8, 38 * 8)  # (row, column) where the X over the false positive crosses
  assert red[fp_centre[0] - 2:fp_centre[0] + 3, fp_centre[1] - 2:fp_centre[1] + 3].any()
  assert not red[40:120, 40:120].any()  # the true positive is not crossed out
  assert red[36 * 8 - 6:36 * 8, 300:440].any()  # red dashes just above the missed object
  assert (pic == class_color(0)).all(-1).any() and (pic == class_color(1)).all(-1).any()


def test_picture_without_ground_truth_marks_nothing():
  pic = detection_picture(item(gt_boxes=None, gt_labels=None, gt_crowd=None), scale=8)
  assert not (picture_part(pic) == MARK_COLOR).all(-1).any()
  assert (picture_part(pic) == class_color(1)).all(-1).any()  # the detection is still drawn


def test_threshold_hides_low_scores():
  pic = picture_part(detection_picture(item(), score_threshold=0.7, scale=8))
  assert not (pic == class_color(1)).all(-1).any()
  red = (pic == MARK_COLOR).all(-1)
  assert not red[12 * 8 - 2:12 * 8 + 3, 38 * 8 - 2:38 * 8 + 3].any()  # no X where no detection is drawn


def test_grid_holds_every_image_under_one_legend():
  items = [item(image_id=i, image=np.full((64, 48 + 16 * i, 3), 90, np.uint8)) for i in range(5)]
  grid = detection_grid(items, class_names=["a", "b", "c"], columns=2, title="validation · step 3")
  widest = max(round(64 * 512 / 64 * (48 + 16 * i) / 64) for i in range(5))
  assert grid.shape[1] >= 2 * 512 and grid.shape[1] <= 2 * widest + 3 * 6
  assert grid.shape[0] > 3 * 512  # three rows of pictures plus captions and the legend
  with pytest.raises(ValueError, match="at least one"):
    detection_grid([])
