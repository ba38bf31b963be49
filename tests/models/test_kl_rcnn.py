"""KL-Loss on Faster R-CNN: the head's KL term and its gradients against a NumPy transcription (own class, foreground
only, normalised by the sampled RoIs), the corner targets, variance voting and Soft-NMS end to end through the
detector's post-processing on hand-made clusters, and a short training run that lowers the losses."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models import build_detector
from jaxdet.models.detectors.kl_rcnn import corner_targets, kl_rcnn_loss
from jaxdet.models.heads.kl_box import decode_kl_detections, kl_box_loss
from jaxdet.train.optim import make_optimizer
from jaxdet.train.state import create_train_state, predict_step, train_step
from tests.models.test_faster_rcnn import TINY_FPN, optim
from tests.ops.nms_reference import greedy_nms, iou_np, soft_nms_np
from tests.train.conftest import painted_batch


def kl_np(pred, target, alpha):
  """He et al. 2019, eq. 9 with the smooth-L1 form: e^-a (|d| - 1/2) + a / 2 for |d| > 1, e^-a d^2 / 2 + a / 2."""
  d = np.abs(target - pred)
  return np.exp(-alpha) * np.where(d > 1, d - 0.5, 0.5 * d * d) + 0.5 * alpha


def kl_grad_np(pred, target, alpha):
  """(dL/dpred, dL/dalpha) of `kl_np`."""
  d = target - pred
  return (-np.exp(-alpha) * np.where(np.abs(d) > 1, np.sign(d), d),
          -np.exp(-alpha) * np.where(np.abs(d) > 1, np.abs(d) - 0.5, 0.5 * d * d) + 0.5)


def test_kl_box_loss_and_its_gradients_equal_the_transcription():
  rng = np.random.default_rng(0)
  b, s, c = 2, 12, 3
  deltas = rng.normal(0, 1.5, (b, s, c, 4)).astype(np.float32)  # both regimes of the smooth-L1 form
  alpha = rng.normal(0, 1, (b, s, c, 4)).astype(np.float32)
  target = rng.normal(0, 1.5, (b, s, 4)).astype(np.float32)
  labels = rng.integers(0, c + 1, (b, s)).astype(np.int32)
  valid = rng.uniform(size=(b, s)) < 0.8
  loss, (d_deltas, d_alpha) = jax.value_and_grad(kl_box_loss, argnums=(0, 1))(deltas, alpha, labels, target, valid)
  want, want_deltas, want_alpha = 0.0, np.zeros_like(deltas), np.zeros_like(alpha)
  num = valid.sum()
  for i in range(b):
    for j in range(s):
      if valid[i, j] and labels[i, j] > 0:
        k = labels[i, j] - 1  # the RoI's own class only
        want += kl_np(deltas[i, j, k], target[i, j], alpha[i, j, k]).sum() / num
        gp, ga = kl_grad_np(deltas[i, j, k], target[i, j], alpha[i, j, k])
        want_deltas[i, j, k], want_alpha[i, j, k] = gp / num, ga / num
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(d_deltas, want_deltas, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(d_alpha, want_alpha, rtol=1e-5, atol=1e-7)


def test_corner_targets_and_the_variance_branch_gradient():
  # A foreground RoI of class 1 matched to ground truth 1, a background RoI, a padding slot.
  rois = np.array([[[10, 10, 30, 50], [0, 0, 8, 8], [0, 0, 0, 0]]], np.float32)
  gt = np.array([[[60, 60, 70, 70], [12, 8, 33, 46]]], np.float32)
  outputs = {"roi_targets": {"rois": rois, "matched": np.array([[1, 0, 0]]), "labels": np.array([[2, 0, 0]]),
                             "valid": np.array([[True, True, False]]), "deltas": np.zeros((1, 3, 4), np.float32)},
             "roi_logits": np.zeros((1, 3, 3), np.float32), "roi_deltas": np.zeros((1, 3, 2, 4), np.float32),
             "roi_log_variance": np.full((1, 3, 2, 4), 0.5, np.float32)}
  targets = {"boxes": gt}
  want = np.array([10 * 2 / 20, 10 * -2 / 40, 10 * 3 / 20, 10 * -4 / 40], np.float32)
  np.testing.assert_allclose(corner_targets(outputs, targets)[0], [want, np.zeros(4), np.zeros(4)], rtol=1e-6)
  grad = jax.grad(lambda a: kl_rcnn_loss(dict(outputs, roi_log_variance=a), targets)[1]["roi_box_loss"])(
      outputs["roi_log_variance"])
  # Only the foreground RoI's own class (class index 1) gets a variance gradient, the transcription's / 2 RoIs.
  np.testing.assert_allclose(grad[0, 0, 1], kl_grad_np(np.zeros(4), want, np.full(4, 0.5))[1] / 2, rtol=1e-5)
  assert np.count_nonzero(grad) == 4


def clusters():
  """A hand-made head output: 2 classes, two objects of class 0 (4 and 3 RoIs) and one of class 1 (3 RoIs)
  overlapping the first, plus background RoIs; per-RoI corner deltas and log-variances."""
  rng = np.random.default_rng(3)
  objects = np.array([[10, 10, 40, 50], [60, 20, 90, 44], [15, 12, 42, 48]], np.float32)
  source = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1])
  rois = objects[source] + rng.normal(0, 2.0, (12, 4)).astype(np.float32)
  logits = np.full((12, 3), -3.0, np.float32)
  cls = np.where(source == 2, 1, 0)
  logits[np.arange(12), cls + 1] = rng.uniform(0, 3, 12)
  logits[10:, 0] = 4.0  # two RoIs that are mostly background: scores below or near the threshold
  deltas = rng.normal(0, 0.5, (12, 2, 4)).astype(np.float32)
  alpha = rng.normal(0, 1, (12, 2, 4)).astype(np.float32)
  return rois, logits, deltas, alpha


def voting_reference(rois, logits, deltas, alpha, *, soft, sigma_t, threshold=0.05):
  """NMS (or Gaussian Soft-NMS) per class, then the paper's voting over the same-class candidates, in NumPy."""
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  size = np.concatenate([rois[:, 2:] - rois[:, :2]] * 2, -1)
  boxes, variances, scores, classes = [], [], [], []
  for r in range(len(rois)):
    for c in range(2):
      if probs[r, c + 1] > threshold:
        boxes.append(rois[r] + deltas[r, c] * size[r] / 10)
        variances.append(np.exp(alpha[r, c]) * (size[r] / 10) ** 2)
        scores.append(probs[r, c + 1])
        classes.append(c)
  boxes, variances, scores, classes = map(np.array, (boxes, variances, scores, classes))
  kept = []
  for c in (0, 1):
    mine = np.flatnonzero(classes == c)
    if soft:
      idx, sc = soft_nms_np(boxes[mine], scores[mine], "gaussian", 0.5, 0.3, 0.001)
    else:
      idx = greedy_nms(boxes[mine], scores[mine], 0.5)
      sc = scores[mine][idx]
    kept += [(s, c, k, mine[i]) for k, (i, s) in enumerate(zip(idx, sc))]
  kept.sort(key=lambda t: (-t[0], t[1], t[2]))
  voted = []
  for _, c, _, i in kept:
    num, den = np.zeros(4), np.zeros(4)
    for j in np.flatnonzero(classes == c):
      ov = iou_np(boxes[i], boxes[j])
      if ov > 0:
        p = np.exp(-(1 - ov) ** 2 / sigma_t)
        num += p * boxes[j] / variances[j]
        den += p / variances[j]
    voted.append(num / den)
  return np.array(voted), np.array([t[0] for t in kept]), np.array([t[1] for t in kept]), boxes[[t[3] for t in kept]]


@pytest.mark.parametrize("soft", [False, True])
def test_variance_voting_and_soft_nms_end_to_end_on_hand_made_clusters(soft):
  rois, logits, deltas, alpha = clusters()
  args = (rois[None], np.ones((1, 12), bool), logits[None], deltas[None], alpha[None])
  decode = lambda voting: jax.jit(functools.partial(  # noqa: E731
      decode_kl_detections, image_shape=(128, 128), max_detections=20, soft_nms=soft, voting=voting, sigma_t=0.05))
  voted, plain = decode(True)(*args), decode(False)(*args)
  want_voted, want_scores, want_classes, want_plain = voting_reference(rois, logits, deltas, alpha, soft=soft,
                                                                       sigma_t=0.05)
  k = len(want_scores)
  assert (k > 3) == soft and k >= 3  # NMS keeps one box per object; Soft-NMS keeps the decayed duplicates too
  for dets in (voted, plain):
    np.testing.assert_array_equal(dets.valid[0], np.arange(20) < k)
    np.testing.assert_allclose(dets.scores[0, :k], want_scores, rtol=1e-5)
    np.testing.assert_array_equal(dets.classes[0, :k], want_classes)
  np.testing.assert_allclose(plain.boxes[0, :k], want_plain, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(voted.boxes[0, :k], want_voted, rtol=1e-5, atol=1e-3)
  assert np.abs(want_voted - want_plain).max() > 0.5  # voting moved boxes: the check is not vacuous


@pytest.fixture(scope="module")
def trained():
  """A tiny KL-Loss Faster R-CNN + FPN trained jointly for 30 steps on painted boxes."""
  detector = build_detector("faster_rcnn_kl", num_classes=2, **TINY_FPN)
  tx, schedule = make_optimizer(optim(), total_steps=30)
  state = create_train_state(detector, tx, image_shape=(64, 64), seed=0)
  step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=schedule))
  history = []
  for i in range(30):
    state, metrics = step(state, painted_batch(seed=i % 6, batch=8))
    history.append({k: float(v) for k, v in metrics.items()})
  return detector, state, history


def test_short_training_lowers_the_losses_and_learns_variances(trained):
  detector, state, history = trained
  first, last = history[:6], history[-6:]
  for key in ("rpn_cls_loss", "roi_cls_loss"):
    assert np.mean([h[key] for h in last]) < 0.7 * np.mean([h[key] for h in first]), key
  # The KL term need not fall this early: it starts on the appended ground truth (zero targets, where it drives
  # the variances down) and grows with the less exact foreground RoIs the improving RPN proposes.
  assert np.mean([h["loss"] for h in last]) < np.mean([h["loss"] for h in first])
  assert all(np.isfinite(h["loss"]) for h in history)
  assert abs(history[0]["roi_log_variance"]) < 0.01 and abs(history[-1]["roi_log_variance"]) > 0.1
  images = {"image": painted_batch(seed=0, batch=4)["image"]}
  outputs = jax.jit(functools.partial(detector.module.apply, train=False))(state.variables(), images["image"])
  assert outputs["roi_log_variance"].shape == (4, 32, 2, 4)
  for soft in (False, True):
    for voting in (False, True):
      dets = decode_kl_detections(outputs["rois"], outputs["roi_valid"], outputs["roi_logits"], outputs["roi_deltas"],
                                  outputs["roi_log_variance"], image_shape=(64, 64), soft_nms=soft,
                                  voting=voting)
      assert dets.boxes.shape == (4, 100, 4) and bool(jnp.any(dets.valid))
      assert np.all(np.isfinite(np.asarray(dets.boxes)))
  assert predict_step(state.variables(), images, detector=detector).valid.shape == (4, 100)
