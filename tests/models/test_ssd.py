"""SSD: the L2Norm layer, the layout's map sizes and priors, targets, the MultiBox loss against a NumPy
transcription, fixed-size decoding, a short training run, and predict -> COCO json -> pycocotools (slow)."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdet.models import build_detector
from jaxdet.models.detectors.ssd import (BOX_WEIGHTS, RATIOS_128, priors_per_cell, ssd_decode, ssd_loss,
                                         ssd_prior_boxes, ssd_targets)
from jaxdet.models.necks.ssd import EXTRAS_128, EXTRAS_300, L2Norm, ssd_feature_sizes
from jaxdet.ops.coders import encode_boxes
from jaxdet.ops.matching import match_ssd
from tests.train.conftest import painted_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(width=4, s_min=0.15)


def test_l2norm_matches_numpy_and_has_finite_gradients():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 3, 6)).astype(np.float32)
  x[0, 1, 2] = 0.0  # an all-zero location, as after ReLU
  layer = L2Norm()
  variables = layer.init(jax.random.key(0), x)
  np.testing.assert_array_equal(variables["params"]["scale"], np.full(6, 20.0, np.float32))
  scale = rng.uniform(0.5, 30, 6).astype(np.float32)
  variables = {"params": {"scale": jnp.asarray(scale)}}
  y = np.asarray(layer.apply(variables, x))
  norm = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=-1, keepdims=True))
  want = np.where(norm > 0, x / np.where(norm > 0, norm, 1), 0) * scale
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(y[1, 0, 0] / scale), 1.0, rtol=1e-5)
  check_grads(lambda v: layer.apply({"params": {"scale": v}}, x[1:]), (jnp.asarray(scale),), order=1,
              modes=["rev"], eps=1e-2)
  unit = {"params": {"scale": jnp.ones(6)}}
  check_grads(lambda xx: layer.apply(unit, xx), (jnp.asarray(x[1:]),), order=1, modes=["rev"], eps=1e-2,
              atol=1e-2, rtol=1e-2)
  grad = jax.grad(lambda xx: jnp.sum(layer.apply(variables, xx) ** 2))(jnp.asarray(x))
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("size,extras,want", [(128, EXTRAS_128, (16, 8, 4, 2, 1)), (64, EXTRAS_128, (8, 4, 2, 1, 1)),
                                             (304, EXTRAS_300, (38, 19, 10, 5, 3, 1))])
def test_layout_map_sizes_and_priors_fit_the_head(size, extras, want):
  assert ssd_feature_sizes(size, extras=extras) == want
  ratios = RATIOS_128 if len(want) == 5 else ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
  detector = build_detector("ssd", num_classes=3, width=2, extras=extras, aspect_ratios=ratios)
  variables = jax.eval_shape(lambda: detector.module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  outputs = jax.eval_shape(lambda v: detector.module.apply(v, jnp.zeros((1, size, size, 3))), variables)
  num_priors = sum(n * n * a for n, a in zip(want, priors_per_cell(ratios)))
  assert outputs["logits"].shape == (1, num_priors, 4) and outputs["deltas"].shape == (1, num_priors, 4)
  priors = ssd_prior_boxes(size, extras=tuple(extras), aspect_ratios=tuple(ratios), s_min=0.2, s_max=0.9)
  assert priors.shape == (num_priors, 4)
  if size == 304:
    assert num_priors == 8732  # SSD300's count


def test_layout_errors_name_the_problem():
  with pytest.raises(ValueError, match="aspect-ratio sets"):
    build_detector("ssd", num_classes=3, aspect_ratios=((2,),) * 4)
  with pytest.raises(ValueError, match="below 1 x 1"):
    ssd_feature_sizes(64, extras=EXTRAS_300)
  detector = build_detector("ssd", num_classes=2, **TINY)
  with pytest.raises(ValueError, match="square"):
    detector.assign({"image": jnp.zeros((1, 64, 96, 3)), "boxes": jnp.zeros((1, 2, 4)),
                     "labels": jnp.zeros((1, 2), jnp.int32), "valid": jnp.zeros((1, 2), bool),
                     "crowd": jnp.zeros((1, 2), bool)})


def test_targets_label_matched_priors_with_class_plus_one_and_encode_with_variances():
  priors = jnp.asarray(ssd_prior_boxes(64, extras=EXTRAS_128, aspect_ratios=RATIOS_128, s_min=0.15, s_max=0.9))
  boxes = jnp.array([[4, 4, 20, 16], [30, 20, 60, 60], [0, 0, 0, 0]], jnp.float32)
  labels = jnp.array([2, 0, 1])
  valid = jnp.array([True, True, False])
  targets = jax.jit(ssd_targets)(priors, boxes, labels, valid, jnp.zeros(3, bool))
  match = match_ssd(priors, boxes, valid)
  fg = np.asarray(match.labels) == 1
  want = np.where(fg, np.array([3, 1, 2])[np.asarray(match.matched_gt)], 0)
  np.testing.assert_array_equal(targets["labels"], want)
  assert set(np.unique(want[fg]).tolist()) == {1, 3}
  encoded = encode_boxes(boxes[match.matched_gt], priors, weights=BOX_WEIGHTS)
  np.testing.assert_allclose(np.asarray(targets["deltas"])[fg], np.asarray(encoded)[fg], rtol=1e-6)
  assert np.all(np.asarray(targets["deltas"])[~fg] == 0)


def multibox_reference(logits, deltas, labels, target_deltas, ratio=3):
  """NumPy MultiBox loss (ssd.pytorch's `MultiBoxLoss`): CE over positives + per image the 3x hardest negatives,
  smooth L1 over the positives, both divided by the batch's number of positives."""
  logits = logits.astype(np.float64)
  log_p = logits - logits.max(-1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
  conf = loc = 0.0
  num_pos = 0
  for b in range(len(labels)):
    pos = labels[b] > 0
    ce = -log_p[b, np.arange(labels.shape[1]), np.maximum(labels[b], 0)]
    neg = np.nonzero(labels[b] == 0)[0]
    hard = neg[np.argsort(-ce[neg], kind="stable")[:min(ratio * pos.sum(), len(neg))]]
    conf += ce[pos].sum() + ce[hard].sum()
    r = np.abs(deltas[b][pos] - target_deltas[b][pos])
    loc += np.where(r < 1, 0.5 * r * r, r - 0.5).sum()
    num_pos += pos.sum()
  return (conf + loc) / num_pos if num_pos else 0.0


def random_outputs(seed, b=3, p=60, k=4, num_pos=(2, 0, 5)):
  rng = np.random.default_rng(seed)
  labels = np.zeros((b, p), np.int32)
  for i, n in enumerate(num_pos):
    labels[i, rng.choice(p, n, replace=False)] = rng.integers(1, k, n)
  labels[0, rng.choice(np.nonzero(labels[0] == 0)[0], 5, replace=False)] = -1  # ignored priors
  return (rng.normal(0, 2, (b, p, k)).astype(np.float32), rng.normal(0, 1.5, (b, p, 4)).astype(np.float32), labels,
          rng.normal(0, 1, (b, p, 4)).astype(np.float32))


@pytest.mark.parametrize("seed", range(3))
def test_multibox_loss_matches_numpy(seed):
  logits, deltas, labels, target_deltas = random_outputs(seed)
  loss, metrics = jax.jit(ssd_loss)({"logits": logits, "deltas": deltas},
                                    {"labels": labels, "deltas": target_deltas})
  np.testing.assert_allclose(loss, multibox_reference(logits, deltas, labels, target_deltas), rtol=1e-5)
  assert float(metrics["num_positives"]) == 7 and float(metrics["num_negatives"]) == 21
  np.testing.assert_allclose(metrics["conf_loss"] + metrics["box_loss"], loss, rtol=1e-6)


def test_no_positives_gives_zero_loss_and_finite_gradients():
  logits, deltas, _, target_deltas = random_outputs(0)
  labels = np.zeros((3, 60), np.int32)
  labels[1, :4] = -1

  def loss_of(lg, dl):
    return ssd_loss({"logits": lg, "deltas": dl}, {"labels": labels, "deltas": target_deltas})[0]

  loss, grads = jax.value_and_grad(loss_of, argnums=(0, 1))(logits, deltas)
  assert float(loss) == 0.0
  assert all(np.all(np.asarray(g) == 0) for g in grads)


def test_loss_refuses_outputs_of_another_layout():
  logits, deltas, labels, target_deltas = random_outputs(0)
  with pytest.raises(ValueError, match="priors per image"):
    ssd_loss({"logits": logits[:, :50], "deltas": deltas[:, :50]}, {"labels": labels, "deltas": target_deltas})


def test_perfect_outputs_decode_to_the_ground_truth_with_fixed_size():
  priors = jnp.asarray(ssd_prior_boxes(64, extras=EXTRAS_128, aspect_ratios=RATIOS_128, s_min=0.15, s_max=0.9))
  boxes = jnp.array([[[4, 4, 20, 16], [30, 20, 60, 60]], [[10, 30, 40, 50], [0, 0, 0, 0]]], jnp.float32)
  labels = jnp.array([[2, 0], [1, 0]])
  valid = jnp.array([[True, True], [True, False]])
  targets = jax.vmap(functools.partial(ssd_targets, priors))(boxes, labels, valid, jnp.zeros((2, 2), bool))
  logits = jax.nn.one_hot(targets["labels"], 4) * 12.0  # confident: each prior's own class, background elsewhere
  decode = jax.jit(functools.partial(ssd_decode, max_detections=7, image_shape=(64, 64)))
  dets = decode({"logits": logits, "deltas": targets["deltas"]}, priors)
  chex.assert_shape([dets.boxes, dets.scores, dets.classes, dets.valid], [(2, 7, 4), (2, 7), (2, 7), (2, 7)])
  # NMS at 0.45 leaves one box per object (all matched priors decode to the same box).
  np.testing.assert_array_equal(np.asarray(dets.valid).sum(axis=1), [2, 1])
  np.testing.assert_allclose(dets.boxes[0, :2][np.argsort(dets.classes[0, :2])], boxes[0][::-1], atol=1e-3)
  np.testing.assert_allclose(dets.boxes[1, 0], boxes[1, 0], atol=1e-3)
  np.testing.assert_array_equal(dets.classes[1, 0], 1)
  assert np.all(np.asarray(dets.boxes)[~np.asarray(dets.valid)] == 0)


def test_postprocess_needs_the_image_shape():
  detector = build_detector("ssd", num_classes=2, **TINY)
  with pytest.raises(ValueError, match="image_shape"):
    detector.postprocess({"logits": jnp.zeros((1, 10, 3)), "deltas": jnp.zeros((1, 10, 4))})


def test_short_training_lowers_the_loss_and_predicts():
  from jaxdet.train.state import predict_step
  from tests.train.test_train_step import train_on
  detector, batch = build_detector("ssd", num_classes=2, **TINY), painted_batch()
  state, losses = train_on(detector, batch, 30)
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.6 * losses[0], losses
  dets = predict_step(state.variables(), {"image": batch["image"]}, detector=detector)
  assert dets.boxes.shape == (8, 100, 4) and bool(dets.valid.any())


def test_bfloat16_compute_keeps_float32_parameters_and_outputs():
  detector = build_detector("ssd", num_classes=2, dtype="bfloat16", **TINY)
  images = jnp.zeros((2, 64, 64, 3), jnp.uint8)
  variables = jax.eval_shape(lambda: detector.module.init(jax.random.key(0), images))
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {np.dtype(np.float32)}
  outputs = jax.eval_shape(lambda v: detector.module.apply(v, images), variables)
  assert {o.dtype for o in jax.tree.leaves(outputs)} == {np.dtype(np.float32)}
  with pytest.raises(ValueError, match="int8"):
    build_detector("ssd", num_classes=2, dtype="int8")


@pytest.mark.slow
def test_predict_to_coco_json_to_pycocotools(shapes_data_dir, tmp_path):
  config = os.path.join(ROOT, "experiments", "configs", "ssd_shapes.py")
  overrides = ["--config.data.shapes_config=tiny", "--config.data.image_size=64", "--config.model.width=4",
               "--config.total_steps=6", "--config.batch_size=8", "--config.eval_batch_size=8",
               "--config.eval_every=6", "--config.checkpoint_every=6", "--config.log_every=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(shapes_data_dir))
  for name, extra in (("train", []), ("eval", ["--split=test", "--checkpoint=best"]),
                      ("predict", ["--split=test", f"--out_dir={tmp_path / 'pred'}", "--max_images=2"])):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", f"{name}.py"), f"--config={config}",
                             f"--workdir={tmp_path / 'run'}", *overrides, *extra], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  from jaxdet.data.shapes import ShapesSource
  ground_truth = COCO()
  ground_truth.dataset = dict(ShapesSource("test", config="tiny", data_dir=shapes_data_dir).coco_ground_truth())
  ground_truth.createIndex()
  results = json.load(open(tmp_path / "run" / "results_test.json"))
  assert results and all(r["score"] > 0.01 for r in results)
  evaluation = COCOeval(ground_truth, ground_truth.loadRes(copy.deepcopy(results)), "bbox")  # loadRes edits them
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  metrics = json.load(open(tmp_path / "run" / "eval_test.json"))
  np.testing.assert_allclose(metrics["AP"], evaluation.stats[0], atol=1e-6)
  assert json.load(open(tmp_path / "pred" / "results.json")) == results  # the same checkpoint, the same detections
