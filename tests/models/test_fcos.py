"""FCOS: location assignment against a NumPy transcription (inside the box, the level's range, smallest area, centre
sampling, crowd regions), centre-ness targets, loss normalisation, fixed-size post-processing, the head's shapes
(jit and not), a short training run, and train -> predict -> pycocotools through the scripts (slow)."""

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models import build_detector
from jaxdet.models.detector import apply_detector, init_detector
from jaxdet.models.detectors.fcos import fcos_locations, fcos_loss, fcos_targets
from jaxdet.models.detectors.pyramid import pyramid_shapes
from tests.models.test_retinanet import ROOT, check_predict_to_pycocotools, focal_reference, train_a_few_steps

LEVELS = (2, 3, 4, 5, 6)
BOUNDS = (16, 32, 64, 128)
TINY = dict(width=8, fpn_features=16, head_features=16, num_groups=4, min_level=2, max_level=6,
            size_boundaries=BOUNDS)


def assign_reference(points, strides, lower, upper, boxes, labels, valid, crowd, radius):
  """FCOS's assignment, transcribed location by location: strictly inside, (optionally) within radius strides of
  the centre, max distance within [lower, upper]; the smallest box (first on ties) wins; crowd boxes ignore."""
  n = len(points)
  positive, ignore = np.zeros(n, bool), np.zeros(n, bool)
  matched, ltrb = np.zeros(n, int), np.zeros((n, 4))
  for i, ((x, y), s) in enumerate(zip(points.astype(np.float64), strides)):
    best = None
    for j, (x1, y1, x2, y2) in enumerate(boxes.astype(np.float64)):
      if not valid[j] or not (x2 > x1 and y2 > y1):
        continue
      d = np.array([x - x1, y - y1, x2 - x, y2 - y])
      if d.min() <= 0:
        continue
      if crowd[j]:
        ignore[i] = True
        continue
      if radius > 0 and not (abs(x - (x1 + x2) / 2) < radius * s and abs(y - (y1 + y2) / 2) < radius * s):
        continue
      if not lower[i] <= d.max() <= upper[i]:
        continue
      area = (x2 - x1) * (y2 - y1)
      if best is None or area < best[0]:
        best = (area, j, d / s)
    if best is not None:
      positive[i], matched[i], ltrb[i] = True, best[1], best[2]
  centerness = np.zeros(n)
  lr, tb = ltrb[positive][:, [0, 2]], ltrb[positive][:, [1, 3]]
  centerness[positive] = np.sqrt(lr.min(1) / lr.max(1) * tb.min(1) / tb.max(1))
  return positive, ignore & ~positive, matched, labels[matched] * positive, ltrb, centerness


def locations(image=64):
  return fcos_locations(pyramid_shapes((image, image), LEVELS), LEVELS, BOUNDS)


def targets(boxes, labels, valid, crowd, radius, image=64):
  loc = locations(image)
  return fcos_targets(loc["points"], loc["strides"], loc["lower"], loc["upper"], boxes, labels, valid, crowd,
                      center_sampling_radius=radius)


@pytest.mark.parametrize("seed,radius", [(0, 0.0), (1, 0.0), (2, 1.5), (3, 1.5), (4, 1.0)])
def test_assignment_matches_reference(seed, radius):
  rng = np.random.default_rng(seed)
  m = 12
  xy = rng.uniform(-8, 56, (m, 2))
  wh = np.exp(rng.uniform(np.log(3), np.log(70), (m, 2)))
  boxes = np.round(np.concatenate([xy, xy + wh], 1)).astype(np.float32)  # integer sides: distances hit the bounds
  boxes[1] = boxes[0]  # two equal boxes: the first wins
  boxes[3, 3] = boxes[3, 1]  # empty
  labels = rng.integers(0, 4, m).astype(np.int32)
  valid = np.arange(m) < m - 1
  crowd = np.zeros(m, bool)
  crowd[4] = True
  got = targets(boxes, labels, valid, crowd, radius)
  loc = locations()
  want = assign_reference(loc["points"], loc["strides"], loc["lower"], loc["upper"], boxes, labels, valid, crowd,
                          radius)
  positive = want[0]
  assert positive.sum() > 20 and want[1].sum() > 0
  np.testing.assert_array_equal(got["positive"], positive)
  np.testing.assert_array_equal(got["ignore"], want[1])
  np.testing.assert_array_equal(np.asarray(got["matched"])[positive], want[2][positive])
  np.testing.assert_array_equal(got["classes"], want[3])
  np.testing.assert_allclose(got["ltrb"], want[4], atol=1e-5)
  np.testing.assert_allclose(got["centerness"], want[5], atol=1e-5)
  assert not np.any(np.asarray(got["matched"])[positive] == 1)  # equal areas: the lower index


def test_level_ranges_smallest_area_and_centre_sampling():
  loc = locations()
  level = np.concatenate([np.full(h * w, lv) for (h, w), lv in zip(pyramid_shapes((64, 64), LEVELS), LEVELS)])
  big = np.array([0, 0, 60, 60], np.float32)  # centre distances ~30: P4's range [32, 64] at its corners, P3's inside
  small = np.array([20, 20, 36, 36], np.float32)  # distances <= 16: P2 only
  got = targets(np.stack([big, small]), np.array([1, 2]), np.ones(2, bool), np.zeros(2, bool), 0.0)
  pos, matched = np.asarray(got["positive"]), np.asarray(got["matched"])
  assert set(level[pos & (matched == 1)]) == {2}
  assert set(level[pos & (matched == 0)]) <= {2, 3, 4}
  # A P2 location that qualifies for two boxes goes to the smaller one: (10, 10) is 14 from the sides of
  # [0, 0, 24, 24] at most and 16 from those of [6, 6, 26, 20] (the upper bound is included).
  both = np.array([[0, 0, 24, 24], [6, 6, 26, 20]], np.float32)
  for order in (both, both[::-1]):
    got = targets(order, np.array([0, 1]), np.ones(2, bool), np.zeros(2, bool), 0.0)
    at = np.flatnonzero((loc["points"][:, 0] == 10) & (loc["points"][:, 1] == 10) & (level == 2))[0]
    assert bool(got["positive"][at]) and np.all(order[int(got["matched"][at])] == both[1])
  # Centre sampling at 1 stride keeps only P2 locations within 4 pixels of the small box's centre (28, 28).
  got = targets(small[None], np.array([2]), np.ones(1, bool), np.zeros(1, bool), 1.0)
  kept = loc["points"][np.asarray(got["positive"])]
  np.testing.assert_array_equal(sorted(map(tuple, kept)), [(26, 26), (26, 30), (30, 26), (30, 30)])


def test_centerness_targets():
  box = np.array([[8, 8, 24, 40]], np.float32)  # 16 x 32, centre (16, 24)
  got = targets(box, np.array([0]), np.ones(1, bool), np.zeros(1, bool), 0.0)
  loc = locations()
  pos = np.asarray(got["positive"])
  x, y = loc["points"][pos, 0], loc["points"][pos, 1]
  s = loc["strides"][pos]
  l, t, r, b = x - 8, y - 8, 24 - x, 40 - y
  np.testing.assert_allclose(np.asarray(got["ltrb"])[pos], np.stack([l, t, r, b], 1) / s[:, None], rtol=1e-6)
  want = np.sqrt(np.minimum(l, r) / np.maximum(l, r) * np.minimum(t, b) / np.maximum(t, b))
  np.testing.assert_allclose(np.asarray(got["centerness"])[pos], want, rtol=1e-5)
  near = (x == 12) & (y == 20) | (x == 20) & (y == 28)  # P3 cells next to the centre: l/r = 4/12, t/b = 12/20
  assert near.sum() == 2
  np.testing.assert_allclose(np.asarray(got["centerness"])[pos][near], math.sqrt(4 / 12 * 12 / 20), rtol=1e-5)
  assert not np.any(np.asarray(got["centerness"])[~pos])


def test_an_image_without_objects_has_no_positives():
  got = targets(np.zeros((4, 4), np.float32), np.zeros(4, np.int32), np.zeros(4, bool), np.zeros(4, bool), 1.5)
  assert not np.any(got["positive"]) and not np.any(got["ignore"]) and not np.any(got["ltrb"])


def loss_case(seed, b=2, n=40, c=3):
  rng = np.random.default_rng(seed)
  positive = rng.random((b, n)) < 0.25
  ltrb_t = np.where(positive[..., None], rng.uniform(0.5, 4, (b, n, 4)), 0).astype(np.float32)
  lr, tb = ltrb_t[..., [0, 2]], ltrb_t[..., [1, 3]]
  ctr = np.where(positive, np.sqrt(lr.min(-1) / np.maximum(lr.max(-1), 1e-9) * tb.min(-1) /
                                   np.maximum(tb.max(-1), 1e-9)), 0).astype(np.float32)
  t = {"positive": positive, "ignore": ~positive & (rng.random((b, n)) < 0.1),
       "classes": np.where(positive, rng.integers(0, c, (b, n)), 0).astype(np.int32), "ltrb": ltrb_t,
       "centerness": ctr}
  outputs = {"logits": [rng.normal(0, 2, (b, 5, 8, c)).astype(np.float32)],
             "ltrb": [rng.uniform(0.3, 5, (b, 5, 8, 4)).astype(np.float32)],
             "centerness": [rng.normal(0, 1, (b, 5, 8, 1)).astype(np.float32)]}
  return jax.tree.map(jnp.asarray, outputs), {k: jnp.asarray(v) for k, v in t.items()}


@pytest.mark.parametrize("box_loss,weighted", [("iou", True), ("iou", False), ("giou", True)])
def test_loss_normalisation(box_loss, weighted):
  outputs, t = loss_case(0)
  loss, metrics = fcos_loss(outputs, t, num_classes=3, box_loss=box_loss, centerness_weighted_box_loss=weighted)
  pos = np.asarray(t["positive"])
  num_pos = pos.sum()
  logits = np.asarray(outputs["logits"][0]).reshape(2, -1, 3).astype(np.float64)
  onehot = np.eye(3)[np.asarray(t["classes"])] * pos[..., None]
  cls = np.sum(focal_reference(logits, onehot, 0.25, 2.0).sum(-1) * ~np.asarray(t["ignore"])) / num_pos
  p = np.asarray(outputs["ltrb"][0]).reshape(2, -1, 4).astype(np.float64)
  g = np.asarray(t["ltrb"]).astype(np.float64)
  inter = (np.minimum(p[..., 0], g[..., 0]) + np.minimum(p[..., 2], g[..., 2])) * (
      np.minimum(p[..., 1], g[..., 1]) + np.minimum(p[..., 3], g[..., 3]))
  area_p, area_g = (p[..., 0] + p[..., 2]) * (p[..., 1] + p[..., 3]), (g[..., 0] + g[..., 2]) * (g[..., 1] + g[..., 3])
  union = area_p + area_g - inter
  if box_loss == "iou":
    per = -np.log(np.maximum(inter / np.maximum(union, 1e-12), 1e-6))
  else:
    enclose = (np.maximum(p[..., 0], g[..., 0]) + np.maximum(p[..., 2], g[..., 2])) * (
        np.maximum(p[..., 1], g[..., 1]) + np.maximum(p[..., 3], g[..., 3]))
    per = 1 - (inter / np.maximum(union, 1e-12) - (enclose - union) / np.maximum(enclose, 1e-12))
  ctr_t = np.asarray(t["centerness"]).astype(np.float64)
  w = ctr_t * pos if weighted else pos.astype(np.float64)
  box = np.sum(per * w) / (w.sum() if weighted else num_pos)
  z = np.asarray(outputs["centerness"][0]).reshape(2, -1).astype(np.float64)
  bce = np.maximum(z, 0) - z * ctr_t + np.log1p(np.exp(-np.abs(z)))
  ctr = np.sum(bce * pos) / num_pos
  np.testing.assert_allclose([metrics["cls_loss"], metrics["box_loss"], metrics["centerness_loss"]], [cls, box, ctr],
                             rtol=2e-5)
  np.testing.assert_allclose(loss, cls + box + ctr, rtol=2e-5)
  doubled = jax.tree.map(lambda x: jnp.concatenate([x, x]), (outputs, t))
  np.testing.assert_allclose(fcos_loss(*doubled, num_classes=3, box_loss=box_loss,
                                       centerness_weighted_box_loss=weighted)[0], loss, rtol=1e-5)


def test_loss_without_positives_is_finite():
  outputs, t = loss_case(1)
  t = dict(t, positive=jnp.zeros_like(t["positive"]), centerness=jnp.zeros_like(t["centerness"]))
  _, metrics = fcos_loss(outputs, t, num_classes=3)
  assert float(metrics["box_loss"]) == 0.0 and float(metrics["centerness_loss"]) == 0.0
  assert np.isfinite(float(metrics["cls_loss"])) and float(metrics["cls_loss"]) > 0


@pytest.fixture(scope="module")
def tiny():
  detector = build_detector("fcos", num_classes=3, **TINY)
  return detector, init_detector(detector, jax.random.PRNGKey(0), image_shape=(64, 64))


class TestModule(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_head_shapes_and_parameters(self):
    detector = build_detector("fcos", num_classes=3, **TINY)
    variables = init_detector(detector, jax.random.PRNGKey(0), image_shape=(64, 64))
    images = jnp.zeros((2, 64, 64, 3), jnp.uint8)
    outputs = self.variant(lambda v, x: apply_detector(detector, v, {"image": x}, train=False))(variables, images)
    for k, s in enumerate([16, 8, 4, 2, 1]):
      chex.assert_shape([outputs["logits"][k], outputs["ltrb"][k], outputs["centerness"][k]],
                        [(2, s, s, 3), (2, s, s, 4), (2, s, s, 1)])
      assert np.all(np.asarray(outputs["ltrb"][k]) >= 0)
    head = variables["params"]["head"]
    assert {f"scale{k}" for k in range(5)} <= set(head) and float(head["scale0"]) == 1.0
    assert {f"{t}_gn{k}" for t in ("cls", "box") for k in range(4)} <= set(head)
    assert len([name for name in head if "conv" in name]) == 8  # two towers of four, shared by every level
    # Regression starts one stride from the location on every side (the bias of 1 through relu).
    assert abs(float(jnp.median(outputs["ltrb"][0])) - 1.0) < 0.1


@pytest.mark.parametrize("activation,on_box_tower", [("exp", False), ("relu", True)])
def test_both_regression_forms_start_one_stride_out(activation, on_box_tower):
  detector = build_detector("fcos", num_classes=3, **dict(TINY, activation=activation,
                                                          centerness_on_box_tower=on_box_tower))
  images = jax.random.randint(jax.random.PRNGKey(1), (1, 64, 64, 3), 0, 256).astype(jnp.uint8)
  variables = init_detector(detector, jax.random.PRNGKey(0), image_shape=(64, 64))
  outputs = apply_detector(detector, variables, {"image": images}, train=False)
  assert all(float(jnp.min(x)) >= 0 for x in outputs["ltrb"])
  assert abs(float(jnp.median(outputs["ltrb"][0])) - 1.0) < 0.1


def test_postprocess_is_fixed_size_and_decodes_distances(tiny):
  detector, variables = tiny
  outputs = apply_detector(detector, variables, {"image": jnp.zeros((2, 64, 64, 3), jnp.uint8)}, train=False)
  low = {"logits": [jnp.full_like(x, -10.0) for x in outputs["logits"]],
         "ltrb": [jnp.ones_like(x) for x in outputs["ltrb"]],
         "centerness": [jnp.zeros_like(x) for x in outputs["centerness"]]}
  dets = detector.postprocess(low, image_shape=(64, 64))
  chex.assert_shape([dets.boxes, dets.scores, dets.classes, dets.valid], [(2, 100, 4), (2, 100), (2, 100), (2, 100)])
  assert not np.any(dets.valid)
  logits = low["logits"][1].at[0, 3, 2, 1].set(4.0)  # P3 cell (3, 2), class 1
  ltrb = low["ltrb"][1].at[0, 3, 2].set(jnp.array([1.0, 0.5, 2.0, 1.5]))
  dets = detector.postprocess(dict(low, logits=[low["logits"][0], logits, *low["logits"][2:]],
                                   ltrb=[low["ltrb"][0], ltrb, *low["ltrb"][2:]]), image_shape=(64, 64))
  assert np.asarray(dets.valid).sum() == 1 and bool(dets.valid[0, 0]) and int(dets.classes[0, 0]) == 1
  x, y = 2.5 * 8, 3.5 * 8
  np.testing.assert_allclose(dets.boxes[0, 0], [x - 8, y - 4, x + 16, y + 12], atol=1e-4)
  sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
  assert float(dets.scores[0, 0]) == pytest.approx(math.sqrt(sigmoid(4.0) * 0.5), rel=1e-5)  # sqrt(p x ctr)


def test_training_lowers_the_loss(shapes_data_dir):
  losses = train_a_few_steps(build_detector("fcos", num_classes=5, **TINY), shapes_data_dir, steps=30,
                             learning_rate=1e-3)
  assert np.mean(losses[-3:]) < 0.75 * losses[0], losses


@pytest.mark.slow
def test_predict_results_are_what_pycocotools_scores(tmp_path, shapes_data_dir):
  check_predict_to_pycocotools(os.path.join(ROOT, "experiments", "configs", "fcos_shapes.py"), tmp_path,
                               shapes_data_dir, "--config.model.width=8", "--config.model.fpn_features=16",
                               "--config.model.head_features=16", "--config.model.num_groups=4")
