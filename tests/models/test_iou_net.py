"""IoU-Net: the jittered training boxes (uniform over IoU in (0.5, 1], targets equal to the true IoU), Algorithm 2's
refinement against a NumPy transcription and on a hand-built IoU predictor, and the detector: short training lowers
its losses, its standard-NMS path equals Faster R-CNN's decoding, its inference switches run and refinement raises
the predicted IoU."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models import build_detector
from jaxdet.models.heads.iou_net import jitter_boxes, refine_boxes
from jaxdet.models.heads.roi_box import decode_detections
from jaxdet.ops.iou import elementwise_iou
from jaxdet.train.optim import make_optimizer
from jaxdet.train.state import create_train_state, train_step
from tests.models.test_faster_rcnn import TINY_FPN, iou_np, optim
from tests.train.conftest import painted_batch

GT = np.array([[10, 10, 40, 50], [60, 60, 90, 80], [20, 30, 50, 70], [5, 70, 30, 95], [0, 0, 0, 0]], np.float32)
LABELS = np.array([0, 1, 0, 1, 0], np.int32)
VALID = np.array([True, True, True, True, False])
CROWD = np.array([False, False, False, True, False])


@functools.partial(jax.jit, static_argnames=("num_samples",))
def jitter_many(keys, valid, *, num_samples=64):
  return jax.vmap(lambda k: jitter_boxes(GT, LABELS, valid, CROWD, key=k, num_samples=num_samples))(keys)


def test_jittered_boxes_are_uniform_over_iou_above_half_with_their_true_iou():
  out = jax.tree.map(np.asarray, jitter_many(jax.random.split(jax.random.PRNGKey(0), 60), VALID))
  valid = out["valid"].reshape(-1)
  assert valid.mean() > 0.98
  boxes, iou, labels = out["boxes"].reshape(-1, 4)[valid], out["iou"].reshape(-1)[valid], out["labels"].reshape(-1)[
      valid]
  # The target is the IoU with the best-overlapping usable ground truth of the box's class (crowd 3 is not usable).
  usable = VALID & ~CROWD
  ious = iou_np(boxes, GT[usable])
  want = np.max(np.where(LABELS[usable][None] == labels[:, None], ious, 0.0), axis=1)
  np.testing.assert_allclose(iou, want, rtol=1e-5, atol=1e-6)
  assert iou.min() > 0.5 and iou.max() <= 1.0
  counts, _ = np.histogram(iou, bins=10, range=(0.5, 1.0))
  assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean(), counts  # ~3,800 boxes
  # Every source is drawn (about equally) and the crowd box never is: each box's best match is usable.
  best = np.argmax(np.where(LABELS[usable][None] == labels[:, None], ious, 0.0), axis=1)
  assert np.bincount(best, minlength=3).min() > 0.25 * len(best)
  # No usable ground truth: no boxes.
  empty = jitter_many(jax.random.split(jax.random.PRNGKey(1), 2), np.zeros(5, bool))
  assert not np.any(np.asarray(empty["valid"]))


def bump(boxes, target, scale):
  """A smooth, hand-built IoU predictor: exp(-|(b - t) / s|^2), maximal (1) at the target box."""
  return jnp.exp(-jnp.sum(jnp.square((boxes - target) / scale), axis=-1))


def refine_np(boxes, target, scale, *, steps, step_size, omega1, omega2, image_shape):
  """IoU-Net's Algorithm 2 as a loop over boxes and rounds, with the bump's analytic gradient; also returns why
  each box stopped (omega1, omega2, empty: a step that would empty the box, T: every round taken)."""
  f = lambda b: np.exp(-np.sum(np.square((b - target) / scale)))  # noqa: E731
  grad = lambda b: f(b) * -2 * (b - target) / scale**2  # noqa: E731
  out, taken, reasons = [], [], set()
  for b in boxes.astype(np.float64):
    count, reason = 0, "T"
    for _ in range(steps):
      prev = f(b)
      size = np.concatenate([b[2:] - b[:2]] * 2)
      moved = np.clip(b + step_size * size * size * grad(b), 0, [image_shape[1], image_shape[0]] * 2)
      if not (moved[2] > moved[0] and moved[3] > moved[1]):
        reason = "empty"
        break
      new = f(moved)
      b, count = moved, count + 1
      if abs(new - prev) < omega1 or new - prev < omega2:
        reason = "omega1" if abs(new - prev) < omega1 else "omega2"
        break
    out.append(b)
    taken.append(count)
    reasons.add(reason)
  return np.array(out), np.array(taken), reasons


@pytest.mark.parametrize("step_size,omega1,omega2,stops", [(0.002, 0.01, -0.01, {"omega1", "T"}),
                                                            (0.01, 1e-3, -0.02, {"T"}),
                                                            (0.4, 1e-4, -0.05, {"omega2", "empty"})])
def test_refinement_is_the_papers_algorithm(step_size, omega1, omega2, stops):
  # Small steps run every round or stop on a small gain (omega1); large ones overshoot and stop on a drop (omega2,
  # keeping that step) or on a step that would empty the box (not taken).
  rng = np.random.default_rng(0)
  target = np.array([20.0, 20.0, 50.0, 60.0], np.float32)
  scale = np.array([8.0, 10.0, 8.0, 10.0], np.float32)
  boxes = (target + rng.normal(0, 5, (12, 4))).astype(np.float32)
  got, score, taken = jax.jit(lambda b: refine_boxes(lambda x: bump(x, target, scale), b, np.ones(12, bool), steps=6,
                                                     step_size=step_size, omega1=omega1, omega2=omega2,
                                                     image_shape=(64, 64)))(boxes)
  want, want_taken, reasons = refine_np(boxes, target, scale, steps=6, step_size=step_size, omega1=omega1,
                                        omega2=omega2, image_shape=(64, 64))
  assert reasons == stops
  np.testing.assert_array_equal(taken, want_taken)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(score, bump(jnp.asarray(want, jnp.float32), target, scale), rtol=1e-4, atol=1e-5)


def test_refinement_raises_the_predicted_iou_and_leaves_invalid_boxes():
  # The predictor is the true IoU with a target box: ascent moves the boxes onto it.
  target = jnp.array([30.0, 20.0, 70.0, 50.0])
  rng = np.random.default_rng(1)
  boxes = (np.asarray(target) + rng.normal(0, 4, (16, 4))).astype(np.float32)
  valid = np.arange(16) < 14
  iou_fn = lambda b: elementwise_iou(b, jnp.broadcast_to(target, b.shape))  # noqa: E731
  got, score, taken = jax.jit(lambda b: refine_boxes(iou_fn, b, valid, steps=8, step_size=0.03, omega1=1e-4,
                                                     omega2=-0.01))(boxes)
  before = np.asarray(iou_fn(boxes))
  assert np.all(np.asarray(score)[valid] > before[valid]) and np.mean(np.asarray(score)[valid] - before[valid]) > 0.05
  np.testing.assert_allclose(score, iou_fn(got), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(got)[~valid], boxes[~valid])
  np.testing.assert_array_equal(np.asarray(taken)[~valid], 0)


@pytest.fixture(scope="module")
def trained():
  """A tiny IoU-Net (FPN) trained jointly for 30 steps on painted boxes."""
  options = dict(TINY_FPN, iou_features=32, iou_samples=16, pre_nms_top_k=64)
  detector = build_detector("faster_rcnn_iounet", num_classes=2, **options)
  tx, schedule = make_optimizer(optim(), total_steps=30)
  state = create_train_state(detector, tx, image_shape=(64, 64), seed=0)
  step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=schedule))
  history = []
  for i in range(30):
    state, metrics = step(state, painted_batch(seed=i % 6, batch=8))
    history.append({k: float(v) for k, v in metrics.items()})
  return options, state, history


def test_short_training_lowers_the_losses_including_the_iou_branch(trained):
  _, _, history = trained
  first, last = history[:6], history[-6:]
  for key in ("rpn_cls_loss", "roi_cls_loss", "iou_loss", "loss"):
    assert np.mean([h[key] for h in last]) < 0.7 * np.mean([h[key] for h in first]), key
  assert all(np.isfinite(h["loss"]) for h in history)


def test_inference_switches_and_refinement_raises_the_predicted_iou(trained):
  options, state, _ = trained
  images = painted_batch(seed=2, batch=4)["image"]
  outputs = {}
  for iou_nms, refine in ((False, False), (False, True), (True, False)):
    detector = build_detector("faster_rcnn_iounet", num_classes=2, **dict(
        options, iou_nms=iou_nms, refine=refine, refine_step_size=0.02, refine_omega1=1e-4, refine_omega2=-0.05))
    outputs[iou_nms, refine] = jax.jit(functools.partial(detector.module.apply, train=False))(
        state.variables(), images)
  # Faster R-CNN's decoding (32 RoIs x 2 classes = 64 = pre_nms_top_k: every pair is a candidate).
  plain, refined, guided = outputs[False, False], outputs[False, True], outputs[True, False]
  want = decode_detections(plain["rois"], plain["roi_valid"], plain["roi_logits"], plain["roi_deltas"],
                           image_shape=(64, 64))
  got = detector.postprocess(plain, image_shape=(64, 64))
  np.testing.assert_array_equal(got.valid, want.valid)
  np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
  np.testing.assert_allclose(got.boxes, want.boxes, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(got.classes, want.classes)
  # Refinement moves the boxes (never drops, adds or re-scores one) and raises their predicted IoU.
  valid = np.asarray(plain["det_valid"])
  assert valid.sum() >= 8
  np.testing.assert_array_equal(refined["det_valid"], valid)
  np.testing.assert_array_equal(refined["det_scores"], plain["det_scores"])
  gain = np.asarray(refined["det_iou"] - plain["det_iou"])[valid]
  assert gain.mean() > 0 and gain.min() > -0.05  # a step that lowers it by more than |omega2| ends the ascent
  assert np.any(np.abs(np.asarray(refined["det_boxes"] - plain["det_boxes"])[valid]) > 1e-3)
  # IoU-guided NMS keeps clusters' best-localised boxes with their best scores: other boxes, scores >= NMS's.
  assert bool(jnp.any(guided["det_valid"]))
  assert float(jnp.sum(guided["det_scores"])) >= float(jnp.sum(plain["det_scores"])) - 1e-4
