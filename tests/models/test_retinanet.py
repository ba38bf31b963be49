"""RetinaNet: anchor assignment against a NumPy transcription (0.5 / 0.4, the ignored band, low-quality matches,
crowd regions), focal-loss normalisation, fixed-size post-processing, the head's shapes and shared parameters (jit
and not), a short training run, and train -> predict -> pycocotools through the scripts (slow)."""

import json
import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models import build_detector
from jaxdet.models.detector import apply_detector, init_detector
from jaxdet.models.detectors.retinanet import retinanet_loss, retinanet_targets
from jaxdet.ops import retinanet_anchors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(width=8, fpn_features=16, head_features=16, min_level=2, max_level=6, anchor_base_scale=2.0)


def iou_reference(a, b):
  """NumPy pairwise IoU `[N, M]` of xyxy boxes; 0 where either box is empty."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
  wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def assign_reference(anchors, boxes, labels, valid, crowd, *, fg=0.5, bg=0.4, low_quality=False):
  """RetinaNet's anchor labelling, transcribed: max IoU >= fg positive, < bg negative, else ignored; optionally each
  ground truth's best anchors positive; anchors half-covered by a crowd box ignored unless positive."""
  real = valid & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  keep = real & ~crowd
  iou = iou_reference(anchors, boxes)
  iou[:, ~keep] = -1
  best, gt = iou.max(1), iou.argmax(1)
  best = np.maximum(best, 0)
  match = np.where(best >= fg, 1, np.where(best < bg, 0, -1))
  if low_quality:
    for j in np.flatnonzero(keep):
      if iou[:, j].max() > 0:
        match[iou[:, j] == iou[:, j].max()] = 1
  for j in np.flatnonzero(real & crowd):
    wh = np.clip(np.minimum(anchors[:, 2:], boxes[j, 2:]) - np.maximum(anchors[:, :2], boxes[j, :2]), 0, None)
    ioa = wh[:, 0] * wh[:, 1] / ((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]))
    match[(ioa >= 0.5) & (match != 1)] = -1
  return match, gt, labels[gt]


def test_thresholds_and_the_ignored_band():
  box = np.array([[0, 0, 10, 10]], np.float32)
  heights = [20, 22.5, 25, 26, 5, 4, 3.9]  # IoU 0.5, 0.444, 0.4, 0.385, 0.5, 0.4, 0.39 with the box
  anchors = np.array([[0, 0, 10, h] for h in heights], np.float32)
  got = retinanet_targets(anchors, box, np.array([3]), np.array([True]), np.array([False]))
  np.testing.assert_array_equal(got["match"], [1, -1, -1, 0, 1, -1, 0])
  np.testing.assert_array_equal(got["classes"], [3, 0, 0, 0, 3, 0, 0])
  np.testing.assert_allclose(got["box_targets"][0], [0, -0.25, 0, math.log(0.5)], atol=1e-6)
  assert not np.any(got["box_targets"][1:4])


@pytest.mark.parametrize("seed,low_quality", [(0, False), (1, False), (2, True), (3, True)])
def test_assignment_matches_reference(seed, low_quality):
  rng = np.random.default_rng(seed)
  anchors, _ = retinanet_anchors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], levels=(2, 3, 4, 5, 6), base_scale=2.0)
  anchors = np.asarray(anchors)
  m = 12
  xy = rng.uniform(-8, 60, (m, 2))
  wh = np.exp(rng.uniform(np.log(3), np.log(60), (m, 2)))
  boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  boxes[0] = anchors[rng.integers(len(anchors))]  # an anchor exactly: IoU 1
  boxes[1, 2] = boxes[1, 0]  # empty
  labels = rng.integers(0, 4, m).astype(np.int32)
  valid = np.arange(m) < m - 2
  crowd = np.zeros(m, bool)
  crowd[2] = True
  got = retinanet_targets(anchors, boxes, labels, valid, crowd, allow_low_quality_matches=low_quality)
  match, gt, classes = assign_reference(anchors, boxes, labels, valid, crowd, low_quality=low_quality)
  np.testing.assert_array_equal(got["match"], match)
  assert set(np.unique(match)) == {-1, 0, 1}  # every kind occurs
  positive = match == 1
  np.testing.assert_array_equal(np.asarray(got["classes"])[positive], classes[positive])
  a, g = anchors[positive].astype(np.float64), boxes[gt[positive]].astype(np.float64)
  aw, ah, gw, gh = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1], g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
  deltas = np.stack([((g[:, 0] + g[:, 2]) - (a[:, 0] + a[:, 2])) / 2 / aw,
                     ((g[:, 1] + g[:, 3]) - (a[:, 1] + a[:, 3])) / 2 / ah, np.log(gw / aw), np.log(gh / ah)], 1)
  np.testing.assert_allclose(np.asarray(got["box_targets"])[positive], deltas, atol=1e-5)
  assert not np.any(np.asarray(got["box_targets"])[~positive])


def test_an_image_without_objects_is_all_background():
  anchors = np.array([[0, 0, 8, 8], [4, 4, 20, 20]], np.float32)
  got = retinanet_targets(anchors, np.zeros((3, 4), np.float32), np.zeros(3, np.int32), np.zeros(3, bool),
                          np.zeros(3, bool), allow_low_quality_matches=True)
  np.testing.assert_array_equal(got["match"], [0, 0])


def focal_reference(logits, targets, alpha, gamma):
  p = 1 / (1 + np.exp(-logits))
  p_t = np.where(targets == 1, p, 1 - p)
  a_t = np.where(targets == 1, alpha, 1 - alpha)
  return -a_t * (1 - p_t) ** gamma * np.log(p_t)


def random_outputs_and_targets(rng, b=2, h=4, w=4, a=3, c=4):
  logits = rng.normal(0, 2, (b, h, w, a * c)).astype(np.float32)
  deltas = rng.normal(0, 1, (b, h, w, a * 4)).astype(np.float32)
  n = h * w * a
  match = rng.choice([-1, 0, 0, 0, 1], (b, n)).astype(np.int32)
  classes = np.where(match == 1, rng.integers(0, c, (b, n)), 0).astype(np.int32)
  box_targets = np.where((match == 1)[..., None], rng.normal(0, 1, (b, n, 4)), 0).astype(np.float32)
  return ({"logits": [jnp.asarray(logits)], "deltas": [jnp.asarray(deltas)]},
          {"match": jnp.asarray(match), "classes": jnp.asarray(classes), "box_targets": jnp.asarray(box_targets)})


@pytest.mark.parametrize("gamma,alpha,beta", [(2.0, 0.25, 0.1), (0.0, 0.75, 0.0), (5.0, 0.25, 1.0)])
def test_loss_is_normalised_by_the_number_of_positives(gamma, alpha, beta):
  rng = np.random.default_rng(0)
  outputs, targets = random_outputs_and_targets(rng)
  loss, metrics = retinanet_loss(outputs, targets, num_classes=4, alpha=alpha, gamma=gamma, box_loss_beta=beta)
  logits = np.asarray(outputs["logits"][0]).reshape(2, -1, 4).astype(np.float64)
  deltas = np.asarray(outputs["deltas"][0]).reshape(2, -1, 4).astype(np.float64)
  match, classes = np.asarray(targets["match"]), np.asarray(targets["classes"])
  onehot = (np.eye(4)[classes] * (match == 1)[..., None])
  num_pos = np.sum(match == 1)
  cls = np.sum(focal_reference(logits, onehot, alpha, gamma).sum(-1) * (match != -1)) / num_pos
  r = np.abs(deltas - np.asarray(targets["box_targets"]))
  l1 = r if beta == 0 else np.where(r < beta, 0.5 * r * r / beta, r - 0.5 * beta)
  box = np.sum(l1.sum(-1) * (match == 1)) / num_pos
  np.testing.assert_allclose(metrics["cls_loss"], cls, rtol=1e-5)
  np.testing.assert_allclose(metrics["box_loss"], box, rtol=1e-5)
  np.testing.assert_allclose(loss, cls + box, rtol=1e-5)
  # Twice the images (twice the positives and twice the sums): the same loss.
  doubled = jax.tree.map(lambda x: jnp.concatenate([x, x]), (outputs, targets))
  np.testing.assert_allclose(retinanet_loss(*doubled, num_classes=4, alpha=alpha, gamma=gamma,
                                            box_loss_beta=beta)[0], loss, rtol=1e-5)


def test_without_positives_the_class_loss_is_a_plain_sum():
  rng = np.random.default_rng(1)
  outputs, targets = random_outputs_and_targets(rng)
  targets = dict(targets, match=jnp.where(targets["match"] == 1, 0, targets["match"]))
  _, metrics = retinanet_loss(outputs, targets, num_classes=4)
  logits = np.asarray(outputs["logits"][0]).reshape(2, -1, 4).astype(np.float64)
  want = np.sum(focal_reference(logits, np.zeros_like(logits), 0.25, 2.0).sum(-1) * (np.asarray(targets["match"]) == 0))
  np.testing.assert_allclose(metrics["cls_loss"], want, rtol=1e-5)
  assert float(metrics["box_loss"]) == 0.0


@pytest.fixture(scope="module")
def tiny():
  detector = build_detector("retinanet", num_classes=3, **TINY)
  variables = init_detector(detector, jax.random.PRNGKey(0), image_shape=(64, 64))
  return detector, variables


class TestModule(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_head_shapes_and_shared_parameters(self):
    detector = build_detector("retinanet", num_classes=3, **TINY)
    variables = init_detector(detector, jax.random.PRNGKey(0), image_shape=(64, 64))
    images = jnp.zeros((2, 64, 64, 3), jnp.uint8)
    outputs = self.variant(lambda v, x: apply_detector(detector, v, {"image": x}, train=False))(variables, images)
    sides = [16, 8, 4, 2, 1]  # P2..P6 of a 64-pixel image
    for logits, deltas, s in zip(outputs["logits"], outputs["deltas"], sides):
      chex.assert_shape(logits, (2, s, s, 9 * 3))
      chex.assert_shape(deltas, (2, s, s, 9 * 4))
    head = variables["params"]["head"]
    assert sorted(head) == sorted([f"{b}_conv{k}" for b in ("cls", "box") for k in range(4)] + ["cls_out", "box_out"])
    np.testing.assert_allclose(head["cls_out"]["bias"], -math.log(99), rtol=1e-6)  # prior 0.01
    np.testing.assert_allclose(jax.nn.sigmoid(outputs["logits"][0]), 0.01, atol=2e-3)


def test_postprocess_is_fixed_size_and_decodes_anchors(tiny):
  detector, variables = tiny
  outputs = apply_detector(detector, variables, {"image": jnp.zeros((2, 64, 64, 3), jnp.uint8)}, train=False)
  outputs = {"logits": [jnp.full_like(x, -10.0) for x in outputs["logits"]],
             "deltas": [jnp.zeros_like(x) for x in outputs["deltas"]]}
  dets = detector.postprocess(outputs, image_shape=(64, 64))
  chex.assert_shape(dets.boxes, (2, 100, 4))
  assert not np.any(dets.valid)  # nothing scores above 0.05
  # One confident (anchor, class) on P3 of image 1: detected as that anchor, the rest stays empty.
  p3 = outputs["logits"][1].at[1, 2, 3, 4 * 3 + 2].set(5.0)  # cell (2, 3), anchor 4 (ratio 1, scale 2^(1/3)), class 2
  dets = detector.postprocess(dict(outputs, logits=[outputs["logits"][0], p3, *outputs["logits"][2:]]),
                              image_shape=(64, 64))
  assert np.asarray(dets.valid).sum() == 1 and bool(dets.valid[1, 0])
  size = 2 * 8 * 2 ** (1 / 3)
  cx, cy = 3.5 * 8, 2.5 * 8
  np.testing.assert_allclose(dets.boxes[1, 0], [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2],
                             atol=1e-4)
  assert int(dets.classes[1, 0]) == 2 and float(dets.scores[1, 0]) == pytest.approx(1 / (1 + math.exp(-5)))


def train_a_few_steps(detector, data_dir, *, steps=25, image_size=64, learning_rate=3e-3):
  """Returns the losses of `steps` Adam steps on one batch of the tiny shapes set (the loss must fall)."""
  import functools  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jaxdet.data.loader import make_loader  # pylint: disable=g-import-not-at-top
  from jaxdet.data.shapes import ShapesSource  # pylint: disable=g-import-not-at-top
  from jaxdet.train.state import create_train_state, train_step  # pylint: disable=g-import-not-at-top

  source = ShapesSource("train", config="tiny", data_dir=data_dir)
  batch = next(iter(make_loader(source, batch_size=8, image_size=image_size, train=True, max_boxes=8, seed=0)))
  batch = {k: batch[k] for k in ("image", "boxes", "labels", "valid", "crowd")}
  tx = optax.adam(learning_rate)
  state = create_train_state(detector, tx, image_shape=(image_size, image_size), seed=0)
  step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=lambda s: learning_rate))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses)) and bool(metrics["finite"])
  return losses


def test_training_lowers_the_loss(shapes_data_dir):
  detector = build_detector("retinanet", num_classes=5, allow_low_quality_matches=True, **TINY)
  losses = train_a_few_steps(detector, shapes_data_dir, steps=30, learning_rate=1e-3)
  assert np.mean(losses[-3:]) < 0.75 * losses[0], losses


def run_script(name, config, workdir, data_dir, *extra):
  """Runs experiments/<name>.py on the tiny shapes set; returns the completed process (asserting success)."""
  cmd = [sys.executable, os.path.join(ROOT, "experiments", f"{name}.py"), f"--config={config}",
         f"--workdir={workdir}", "--config.data.shapes_config=tiny", "--config.data.image_size=64",
         "--config.data.max_boxes=8", "--config.batch_size=8", "--config.eval_batch_size=8", *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(data_dir))
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


def check_predict_to_pycocotools(config, tmp_path, data_dir, *model_flags):
  """Trains a few steps, evaluates on test, predicts, and scores the results json with pycocotools itself."""
  pytest.importorskip("pycocotools")
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  from jaxdet.data.shapes import ShapesSource  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "run"
  # Score threshold 0: every image keeps its 100 best boxes, so a briefly trained detector still has results.
  flags = ["--config.total_steps=6", "--config.eval_every=6", "--config.checkpoint_every=6",
           "--config.optim.warmup_steps=2", "--config.model.score_threshold=0.0", *model_flags]
  run_script("train", config, workdir, data_dir, *flags)
  run_script("eval", config, workdir, data_dir, "--split=test", "--checkpoint=best", *flags)
  run_script("predict", config, workdir, data_dir, "--split=test", f"--out_dir={tmp_path / 'pred'}",
             "--max_images=2", "--checkpoint=best", *flags)
  results = json.load(open(tmp_path / "pred" / "results.json"))
  assert results and results == json.load(open(workdir / "results_test.json"))
  coco = COCO()
  coco.dataset = dict(ShapesSource("test", config="tiny", data_dir=data_dir).coco_ground_truth())
  coco.createIndex()
  cocoeval = COCOeval(coco, coco.loadRes(str(tmp_path / "pred" / "results.json")), "bbox")
  cocoeval.evaluate()
  cocoeval.accumulate()
  cocoeval.summarize()
  metrics = json.load(open(workdir / "eval_test.json"))
  np.testing.assert_allclose([metrics["AP"], metrics["AP50"], metrics["AR100"]],
                             [cocoeval.stats[0], cocoeval.stats[1], cocoeval.stats[8]], atol=1e-6)


@pytest.mark.slow
def test_predict_results_are_what_pycocotools_scores(tmp_path, shapes_data_dir):
  check_predict_to_pycocotools(os.path.join(ROOT, "experiments", "configs", "retinanet_shapes.py"), tmp_path,
                               shapes_data_dir, "--config.model.width=8", "--config.model.fpn_features=16",
                               "--config.model.head_features=16")
