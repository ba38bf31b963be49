"""Faster R-CNN: RPN anchor targets against a NumPy transcription of the paper's rules, the anchor and RoI
minibatches, per-class decoding, the alternating-training stages (frozen parameters stay bit-identical,
init_from), and short training runs of the single-map and FPN detectors that lower both stages' losses."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdet.models import build_detector
from jaxdet.models.detectors.faster_rcnn import anchor_layout
from jaxdet.models.heads.roi_box import decode_detections, sample_rois
from jaxdet.models.heads.rpn import rpn_targets, sample_anchors
from jaxdet.ops.matching import IGNORE
from jaxdet.train.optim import make_optimizer
from jaxdet.train.state import create_train_state, predict_step, train_step
from tests.ops.nms_reference import greedy_nms
from tests.train.conftest import painted_batch

TINY = dict(backbone="resnet", depth=18, width=8, rpn_features=16, head_features=32, anchor_sizes=(16, 32, 64),
            train_pre_nms_top_n=300, train_post_nms_top_n=64, test_pre_nms_top_n=200, test_post_nms_top_n=32,
            roi_batch_size=32)
TINY_FPN = dict(TINY, fpn=True, fpn_features=16, anchor_sizes=(8, 16, 32, 64, 128), canonical_size=56)


def iou_np(a, b):
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
  return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def rpn_labels_np(anchors, gt, image_shape, ignore_border=True):
  """The paper's rules, written as the reference code: drop cross-boundary anchors, then label the rest."""
  h, w = image_shape
  inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= w) & (anchors[:, 3] <= h)
            if ignore_border else np.ones(len(anchors), bool))
  labels = np.full(len(anchors), IGNORE)
  ious = iou_np(anchors[inside], gt)
  best = ious.max(axis=1)
  lab = np.full(inside.sum(), IGNORE)
  lab[best < 0.3] = 0
  lab[np.any((ious == ious.max(axis=0)) & (ious > 0), axis=1)] = 1  # each ground truth's best anchor(s)
  lab[best >= 0.7] = 1
  labels[inside] = lab
  return labels


@pytest.mark.parametrize("ignore_border", [True, False])
def test_rpn_targets_follow_the_papers_rules(ignore_border):
  anchors, _ = anchor_layout((64, 96), fpn=False, anchor_sizes=(16, 32, 64), aspect_ratios=(0.5, 1, 2))
  anchors = np.asarray(anchors)
  # A box hugging the border, whose best anchor overall crosses the border; a small one; a large one.
  gt = np.array([[0, 0, 30, 40], [50, 20, 60, 28], [20, 10, 90, 60], [0, 0, 0, 0]], np.float32)
  valid = np.array([True, True, True, False])
  got = rpn_targets(anchors, gt, valid, np.zeros(4, bool), image_shape=(64, 96), ignore_border=ignore_border)
  want = rpn_labels_np(anchors, gt[:3], (64, 96), ignore_border)
  np.testing.assert_array_equal(got["labels"], want)
  assert np.sum(want == 1) >= 3  # every object has a positive anchor
  fg = np.asarray(got["labels"]) == 1
  matched = np.argmax(iou_np(anchors[fg], gt[:3]), axis=1)
  a, g = anchors[fg], gt[matched]
  aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
  want_dx = ((g[:, 0] + g[:, 2]) / 2 - (a[:, 0] + a[:, 2]) / 2) / aw
  want_dh = np.log((g[:, 3] - g[:, 1]) / ah)
  np.testing.assert_allclose(got["deltas"][fg][:, 0], want_dx, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["deltas"][fg][:, 3], want_dh, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got["deltas"])[~fg] == 0)


@pytest.mark.parametrize("positives,negatives", [(10, 500), (300, 500), (0, 40), (200, 20)])
def test_anchor_minibatch_is_256_at_up_to_half_positive(positives, negatives):
  labels = np.concatenate([np.ones(positives), np.zeros(negatives), np.full(50, IGNORE)]).astype(np.int32)
  labels = np.random.default_rng(positives).permutation(labels)
  sampled = np.asarray(sample_anchors(jnp.asarray(labels), key=jax.random.PRNGKey(0)))
  n_pos = min(positives, 128)
  assert np.sum(sampled == 1) == n_pos
  assert np.sum(sampled == 0) == min(negatives, 256 - n_pos)
  assert np.all(labels[sampled != IGNORE] == sampled[sampled != IGNORE])  # a sample keeps its label


def test_roi_minibatch_ratio_appended_ground_truth_and_targets():
  gt = np.array([[10, 10, 40, 50], [60, 60, 90, 80], [0, 0, 0, 0]], np.float32)
  labels = np.array([2, 0, 0], np.int32)
  valid = np.array([True, True, False])
  rng = np.random.default_rng(0)
  # Jittered copies of the two objects: IoUs from about 0 to 1, so every band has candidates.
  base = gt[rng.integers(0, 2, 400)]
  size = np.concatenate([base[:, 2:] - base[:, :2]] * 2, -1)
  proposals = (base + rng.normal(0, 0.35, (400, 4)) * size).astype(np.float32)
  proposals[:, 2:] = np.maximum(proposals[:, 2:], proposals[:, :2] + 1)
  ious_all = iou_np(np.concatenate([proposals, gt[:2]]), gt[:2]).max(axis=1)
  n_fg = min(int(np.sum(ious_all >= 0.5)), 32)
  n_bg = min(int(np.sum((ious_all >= 0.1) & (ious_all < 0.5))), 128 - n_fg)
  assert n_fg == 32 and n_bg == 96  # the case exercises both caps
  out = sample_rois(proposals, np.ones(400, bool), gt, labels, valid, np.zeros(3, bool), key=jax.random.PRNGKey(1))
  v = np.asarray(out["valid"])
  fg = v & (np.asarray(out["labels"]) > 0)
  assert v.sum() == 128 and fg.sum() == 32 and np.all(v[:128])  # sampled slots come first
  ious = iou_np(np.asarray(out["rois"])[v], gt[:2]).max(axis=1)
  assert np.all(ious[fg[v]] >= 0.5) and np.all((ious[~fg[v]] >= 0.1) & (ious[~fg[v]] < 0.5))
  # Ground truth only (no valid proposal): both boxes come back as foreground with their class and zero deltas.
  out = sample_rois(proposals, np.zeros(400, bool), gt, labels, valid, np.zeros(3, bool), key=jax.random.PRNGKey(2))
  v = np.asarray(out["valid"])
  assert v.sum() == 2
  np.testing.assert_allclose(np.asarray(out["rois"])[v], gt[:2])
  np.testing.assert_array_equal(np.asarray(out["labels"])[v], [3, 1])
  np.testing.assert_allclose(np.asarray(out["deltas"])[v], 0.0, atol=1e-6)


def test_per_class_decoding_matches_numpy():
  rng = np.random.default_rng(3)
  r, c = 20, 3
  xy = rng.uniform(0, 60, (r, 2))
  rois = np.concatenate([xy, xy + rng.uniform(8, 30, (r, 2))], -1).astype(np.float32)
  logits = rng.normal(size=(r, c + 1)).astype(np.float32) * 2
  deltas = (rng.normal(size=(r, c, 4)) * 0.5).astype(np.float32)
  roi_valid = np.arange(r) < 17
  dets = decode_detections(jnp.asarray(rois)[None], jnp.asarray(roi_valid)[None], jnp.asarray(logits)[None],
                           jnp.asarray(deltas)[None], image_shape=(64, 80), score_threshold=0.1, max_detections=12)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  boxes, scores, classes = [], [], []
  for i in range(r):
    for k in range(c):
      w, h = rois[i, 2] - rois[i, 0], rois[i, 3] - rois[i, 1]
      cx, cy = rois[i, 0] + w / 2 + deltas[i, k, 0] / 10 * w, rois[i, 1] + h / 2 + deltas[i, k, 1] / 10 * h
      pw, ph = w * np.exp(deltas[i, k, 2] / 5), h * np.exp(deltas[i, k, 3] / 5)
      box = np.clip([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2], 0, [80, 64, 80, 64])
      boxes.append(box)
      scores.append(probs[i, k + 1] if roi_valid[i] else 0.0)
      classes.append(k)
  boxes, scores, classes = np.float32(boxes), np.float32(scores), np.array(classes)
  keep = greedy_nms(boxes, scores, 0.5, classes=classes, score_threshold=0.1)[:12]
  n = len(keep)
  np.testing.assert_array_equal(np.asarray(dets.valid[0]), np.arange(12) < n)
  np.testing.assert_allclose(dets.scores[0, :n], scores[keep], rtol=1e-5)
  np.testing.assert_array_equal(dets.classes[0, :n], classes[keep])
  np.testing.assert_allclose(dets.boxes[0, :n], boxes[keep], rtol=1e-4, atol=1e-3)


def optim(**kw):
  return ml_collections.ConfigDict(dict(optimizer="adam", learning_rate=3e-3, schedule="constant", warmup_steps=0,
                                        grad_clip_norm=10.0) | kw)


def train(options, steps, *, frozen=(), state=None, seed=0):
  detector = build_detector("faster_rcnn", num_classes=2, **options)
  tx, schedule = make_optimizer(optim(frozen=frozen), total_steps=steps)
  if state is None:
    state = create_train_state(detector, tx, image_shape=(64, 64), seed=seed)
  else:
    state = state.replace(opt_state=tx.init(state.params))
  step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=schedule))
  history = []
  for i in range(steps):
    state, metrics = step(state, painted_batch(seed=i % 6, batch=8))
    history.append({k: float(v) for k, v in metrics.items()})
  return detector, state, history


@pytest.fixture(scope="module", params=[TINY, TINY_FPN], ids=["c4", "fpn"])
def trained(request):
  """A tiny detector trained jointly for 30 steps on painted boxes (compiled once per variant)."""
  return request.param, *train(request.param, 30)


def test_short_joint_training_lowers_both_stages_losses(trained):
  _, detector, state, history = trained
  first, last = history[:6], history[-6:]
  for key in ("rpn_cls_loss", "roi_cls_loss", "loss"):
    assert np.mean([h[key] for h in last]) < 0.7 * np.mean([h[key] for h in first]), key
  dets = predict_step(state.variables(), {"image": painted_batch(seed=0, batch=4)["image"]}, detector=detector)
  assert dets.boxes.shape == (4, 100, 4) and bool(jnp.any(dets.valid))


def test_four_step_stages_leave_frozen_parameters_bit_identical(trained):
  # Step 3 of the alternating training: shared layers frozen (inference-mode batch norm), only the RPN trains.
  options, _, state, _ = trained
  shared = ("backbone", "neck") if options.get("fpn") else ("backbone",)
  _, after, history = train(dict(options, stage="rpn", frozen_backbone=True), 3,
                            frozen=tuple(f"{n}/" for n in shared) + ("roi_head/",), state=state)
  for name in (*shared, "roi_head"):
    for a, b in zip(jax.tree.leaves(state.params[name]), jax.tree.leaves(after.params[name])):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(after.batch_stats)):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params["rpn"]),
                                                       jax.tree.leaves(after.params["rpn"])))
  assert "roi_cls_loss" not in history[0] and history[0]["loss"] == pytest.approx(
      history[0]["rpn_cls_loss"] + history[0]["rpn_box_loss"], rel=1e-5)


def test_separate_proposer_carries_its_own_backbone():
  detector = build_detector("faster_rcnn", num_classes=2, stage="rcnn", separate_proposer=True, **TINY)
  tx, _ = make_optimizer(optim(frozen=("proposer_", "rpn/")), total_steps=1)
  state = create_train_state(detector, tx, image_shape=(64, 64), seed=0)
  assert {"backbone", "proposer_backbone", "rpn", "roi_head"} <= set(state.params)
  _, metrics = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=lambda s: 0.0))(
      state, painted_batch(batch=4))
  assert float(metrics["loss"]) == pytest.approx(float(metrics["roi_cls_loss"] + metrics["roi_box_loss"]), rel=1e-5)


def test_image_sides_must_be_multiples_of_the_coarsest_stride():
  with pytest.raises(ValueError, match="multiples of 64"):
    anchor_layout((96, 128), fpn=True, anchor_sizes=(8, 16, 32, 64, 128), aspect_ratios=(1.0,))
