"""CenterNet: targets against a NumPy transcription, the loss by hand, decoding, flip test, module shapes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdet.models import build_detector
from jaxdet.models.detectors.centernet import centernet_decode, centernet_loss, centernet_targets, merge_flipped
from tests.ops.test_heatmaps import radius_reference, splat_reference

STRIDE = 4


def targets_reference(boxes, labels, valid, crowd, shape, num_classes):
  """CenterNet's `ctdet` target code for one image, transcribed: radius, splat, index, offset, size."""
  h, w = shape
  keep = valid & ~crowd
  centers, radii, labs = [], [], []
  index, offset, size, mask = [], [], [], []
  for box, label, k in zip(boxes, labels, keep):
    x1, y1, x2, y2 = np.clip(box, 0, [w * STRIDE, h * STRIDE, w * STRIDE, h * STRIDE])
    bw, bh = x2 - x1, y2 - y1
    ok = bool(k and bw > 0 and bh > 0)
    ct = np.array([(x1 + x2) / 2, (y1 + y2) / 2]) / STRIDE
    ct_int = np.minimum(np.floor(ct).astype(int), [w - 1, h - 1])
    if ok:
      centers.append((ct_int[1], ct_int[0]))
      radii.append(max(0, int(radius_reference(np.ceil(bh / STRIDE), np.ceil(bw / STRIDE)))))
      labs.append(label)
    index.append(ct_int[1] * w + ct_int[0])
    offset.append(ct - np.floor(ct))
    size.append((bw, bh))
    mask.append(ok)
  heat = splat_reference(centers, radii, labs, shape, num_classes)
  return heat, np.array(index), np.array(offset), np.array(size), np.array(mask)


def random_objects(rng, m=10, image=128):
  xy = rng.uniform(-10, image - 4, (m, 2))
  wh = rng.uniform(2, 60, (m, 2))
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  labels = rng.integers(0, 3, m).astype(np.int32)
  valid = np.arange(m) < m - 2
  crowd = np.zeros(m, bool)
  return boxes, labels, valid, crowd


@pytest.mark.parametrize("seed", range(4))
def test_targets_match_reference(seed):
  rng = np.random.default_rng(seed)
  boxes, labels, valid, crowd = random_objects(rng)
  got = centernet_targets(boxes, labels, valid, crowd, output_shape=(32, 32), num_classes=3, stride=STRIDE)
  heat, index, offset, size, mask = targets_reference(boxes, labels, valid, crowd, (32, 32), 3)
  np.testing.assert_array_equal(got["mask"], mask)
  np.testing.assert_allclose(got["heatmap"], heat, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got["index"])[mask], index[mask])
  np.testing.assert_allclose(np.asarray(got["offset"])[mask], offset[mask], atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["size"])[mask], size[mask], atol=1e-4)
  assert not np.any(got["ignore"])


def test_crowd_regions_are_ignored_not_positive():
  boxes = np.array([[8, 8, 40, 40], [60, 60, 100, 90]], np.float32)
  got = centernet_targets(boxes, np.array([0, 1]), np.array([True, True]), np.array([True, False]),
                          output_shape=(32, 32), num_classes=2, stride=STRIDE)
  assert float(jnp.max(got["heatmap"][..., 0])) == 0.0  # the crowd box adds no gaussian
  ignore = np.asarray(got["ignore"])
  assert ignore[2:10, 2:10].all() and not ignore[15:, 15:].any()
  np.testing.assert_array_equal(got["mask"], [False, True])


def test_degenerate_and_nan_boxes_give_finite_targets():
  boxes = np.array([[5, 5, 5, 30], [np.nan, 1, 2, 3], [10, 10, 30, 30]], np.float32)
  got = centernet_targets(boxes, np.zeros(3, np.int32), np.ones(3, bool), np.zeros(3, bool), output_shape=(16, 16),
                          num_classes=1, stride=STRIDE)
  assert all(np.all(np.isfinite(np.asarray(v, np.float32))) for v in got.values())
  np.testing.assert_array_equal(got["mask"], [False, False, True])


def loss_reference(outputs, heat, index, offset, size, mask):
  """CenterNet's L_det = L_k + 0.1 L_size + 1 L_off for one image, in float64: `_neg_loss` over positive cells,
  `RegL1Loss` over objects."""
  logits = np.asarray(outputs["heatmap"][0], np.float64)
  p = 1 / (1 + np.exp(-logits))
  pos = heat == 1
  lk = np.where(pos, -(1 - p)**2 * np.log(p), -(1 - heat)**4 * p**2 * np.log(1 - p)).sum()
  n = max(mask.sum(), 1)
  flat = lambda x: np.asarray(x[0], np.float64).reshape(-1, 2)  # noqa: E731
  l_off = np.abs(flat(outputs["offset"])[index] - offset).mean(-1)[mask].sum() / n
  l_size = np.abs(flat(outputs["size"])[index] - size).mean(-1)[mask].sum() / n
  return lk / max(pos.sum(), 1) + 0.1 * l_size + l_off


def test_loss_matches_reference():
  rng = np.random.default_rng(7)
  boxes, labels, valid, crowd = random_objects(rng)
  t = centernet_targets(boxes, labels, valid, crowd, output_shape=(32, 32), num_classes=3, stride=STRIDE)
  outputs = {"heatmap": jnp.asarray(rng.normal(-2, 1, (1, 32, 32, 3)), jnp.float32),
             "offset": jnp.asarray(rng.uniform(0, 1, (1, 32, 32, 2)), jnp.float32),
             "size": jnp.asarray(rng.uniform(0, 60, (1, 32, 32, 2)), jnp.float32)}
  batched = jax.tree.map(lambda x: x[None], t)
  loss, metrics = centernet_loss(outputs, batched)
  m = np.asarray(t["mask"])
  want = loss_reference(outputs, np.asarray(t["heatmap"]), np.asarray(t["index"]), np.asarray(t["offset"]),
                        np.asarray(t["size"]), m)
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  assert float(metrics["num_objects"]) == m.sum()
  # The focal term is smooth: numerical check. The L1 terms are piecewise linear: d/d size = 0.1 sign / (2 N).
  # (On a 4 x 4 map: float32 finite differences of a sum over thousands of cells are too noisy.)
  small = centernet_targets(np.array([[1, 2, 9, 7], [6, 6, 15, 16]], np.float32), np.array([0, 1]),
                            np.ones(2, bool), np.zeros(2, bool), output_shape=(4, 4), num_classes=2, stride=STRIDE)
  small = jax.tree.map(lambda x: x[None], small)
  small_outputs = {"heatmap": jnp.asarray(rng.normal(-1, 1, (1, 4, 4, 2)), jnp.float32),
                   "offset": jnp.zeros((1, 4, 4, 2)), "size": jnp.zeros((1, 4, 4, 2))}
  check_grads(lambda hm: centernet_loss(dict(small_outputs, heatmap=hm), small)[0], (small_outputs["heatmap"],),
              order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  grad_size = np.asarray(jax.grad(lambda o: centernet_loss(o, batched)[0])(outputs)["size"]).reshape(-1, 2)
  index = np.asarray(t["index"])[m]
  pred = np.asarray(outputs["size"]).reshape(-1, 2)[index]
  want_grad = np.zeros_like(grad_size)
  np.add.at(want_grad, index, 0.1 * np.sign(pred - np.asarray(t["size"])[m]) / (2 * m.sum()))
  np.testing.assert_allclose(grad_size, want_grad, atol=1e-7)


def test_perfect_outputs_decode_to_the_ground_truth():
  boxes = np.array([[10.5, 20.25, 50.5, 44.25], [70, 12, 120, 100], [3, 90, 19, 106]], np.float32)
  labels = np.array([2, 0, 1], np.int32)
  t = centernet_targets(boxes, labels, np.ones(3, bool), np.zeros(3, bool), output_shape=(32, 32), num_classes=3,
                        stride=STRIDE)
  heat = np.where(np.asarray(t["heatmap"]) == 1, 10.0, -10.0)
  offset = np.zeros((32 * 32, 2), np.float32)
  size = np.zeros((32 * 32, 2), np.float32)
  offset[np.asarray(t["index"])] = t["offset"]
  size[np.asarray(t["index"])] = t["size"]
  outputs = {"heatmap": jnp.asarray(heat[None]), "offset": jnp.asarray(offset.reshape(1, 32, 32, 2)),
             "size": jnp.asarray(size.reshape(1, 32, 32, 2))}
  dets = centernet_decode(outputs, stride=STRIDE, k=5, image_shape=(128, 128))
  chex.assert_shape(dets.boxes, (1, 5, 4))
  confident = np.asarray(dets.scores[0]) > 0.5
  assert confident.sum() == 3
  order = np.argsort(np.asarray(dets.classes[0])[confident])
  np.testing.assert_allclose(np.asarray(dets.boxes[0])[confident][order], boxes[[1, 2, 0]], atol=1e-4)


def test_flip_merge_averages_probabilities_with_the_mirrored_pass():
  rng = np.random.default_rng(0)
  outputs = {"heatmap": jnp.asarray(rng.normal(size=(1, 8, 8, 3)), jnp.float32),
             "offset": jnp.asarray(rng.uniform(size=(1, 8, 8, 2)), jnp.float32),
             "size": jnp.asarray(rng.uniform(1, 5, (1, 8, 8, 2)), jnp.float32)}
  # A network that sees the mirrored image and answers with the mirrored outputs: the merge changes nothing.
  mirrored = jax.tree.map(lambda x: x[:, :, ::-1], outputs)
  merged = merge_flipped(outputs, mirrored)
  np.testing.assert_allclose(merged["heatmap"], outputs["heatmap"], atol=1e-4)
  np.testing.assert_allclose(merged["size"], outputs["size"], atol=1e-6)
  # Otherwise probabilities (not logits) and sizes are averaged; offsets are the unflipped pass's.
  other = jax.tree.map(lambda x: x + 1.0, mirrored)
  merged = merge_flipped(outputs, other)
  p = (jax.nn.sigmoid(outputs["heatmap"]) + jax.nn.sigmoid(outputs["heatmap"] + 1.0)) / 2
  np.testing.assert_allclose(jax.nn.sigmoid(merged["heatmap"]), p, atol=1e-6)
  np.testing.assert_allclose(merged["size"], outputs["size"] + 0.5, atol=1e-6)
  np.testing.assert_array_equal(merged["offset"], outputs["offset"])


@pytest.mark.parametrize("jit", [False, True])
def test_module_output_shapes_and_assign(jit):
  variant = jax.jit if jit else (lambda f: f)
  detector = build_detector("centernet", num_classes=5, width=8, neck_features=(16, 16, 16), head_features=8)
  images = jnp.zeros((2, 64, 96, 3), jnp.uint8)
  variables = detector.module.init(jax.random.PRNGKey(0), images)
  outputs = variant(lambda v, x: detector.module.apply(v, x))(variables, images)
  chex.assert_shape(outputs["heatmap"], (2, 16, 24, 5))
  chex.assert_shape([outputs["offset"], outputs["size"]], (2, 16, 24, 2))
  np.testing.assert_allclose(jax.nn.sigmoid(outputs["heatmap"]), 0.1, atol=0.01)  # the focal-loss prior
  batch = {"image": images, "boxes": jnp.zeros((2, 4, 4)), "labels": jnp.zeros((2, 4), jnp.int32),
           "valid": jnp.zeros((2, 4), bool), "crowd": jnp.zeros((2, 4), bool)}
  targets = variant(detector.assign)(batch)
  chex.assert_shape(targets["heatmap"], (2, 16, 24, 5))
  loss, _ = detector.loss(outputs, targets)
  assert np.isfinite(float(loss))


def test_assign_refuses_sides_that_are_not_multiples_of_32():
  detector = build_detector("centernet", num_classes=1, width=8, neck_features=(8, 8, 8), head_features=8)
  batch = {"image": jnp.zeros((1, 60, 64, 3)), "boxes": jnp.zeros((1, 1, 4)), "labels": jnp.zeros((1, 1), int),
           "valid": jnp.zeros((1, 1), bool), "crowd": jnp.zeros((1, 1), bool)}
  with pytest.raises(ValueError, match="multiples of 32"):
    detector.assign(batch)


def test_skip_connections_and_size_scale():
  kwargs = dict(num_classes=2, width=8, neck_features=(16, 16, 16), head_features=8)
  plain = build_detector("centernet", **kwargs)
  skip = build_detector("centernet", skip_connections=True, size_scale=16.0, **kwargs)
  images = jnp.zeros((1, 64, 64, 3), jnp.uint8)
  v_plain = plain.module.init(jax.random.PRNGKey(0), images)
  v_skip = skip.module.init(jax.random.PRNGKey(0), images)
  lateral = [k for k in v_skip["params"]["neck"] if k.startswith("lateral") and not k.endswith("_bn")]
  assert sorted(lateral) == ["lateral1", "lateral2", "lateral3"]
  assert not any(k.startswith("lateral") for k in v_plain["params"]["neck"])
  out = skip.module.apply(v_skip, images)
  chex.assert_shape(out["size"], (1, 16, 16, 2))
  # The scale multiplies the size branch: the same parameters without it give 1/16 of the sizes.
  unscaled = build_detector("centernet", skip_connections=True, **kwargs).module.apply(v_skip, images)
  np.testing.assert_allclose(out["size"], 16.0 * unscaled["size"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["heatmap"], unscaled["heatmap"], rtol=1e-6)


def test_logits_inside_crowd_regions_do_not_change_the_loss():
  boxes = np.array([[8, 8, 40, 40], [60, 60, 100, 90]], np.float32)
  t = centernet_targets(boxes, np.array([0, 1]), np.array([True, True]), np.array([True, False]),
                        output_shape=(32, 32), num_classes=2, stride=STRIDE)
  t = jax.tree.map(lambda x: x[None], t)
  rng = np.random.default_rng(1)
  outputs = {"heatmap": jnp.asarray(rng.normal(-2, 1, (1, 32, 32, 2)), jnp.float32),
             "offset": jnp.zeros((1, 32, 32, 2)), "size": jnp.zeros((1, 32, 32, 2))}
  poked = dict(outputs, heatmap=outputs["heatmap"].at[0, 3:9, 3:9, :].add(5.0))  # inside the crowd box
  np.testing.assert_allclose(centernet_loss(poked, t)[0], centernet_loss(outputs, t)[0], rtol=1e-6)
  outside = dict(outputs, heatmap=outputs["heatmap"].at[0, 25:28, 2:5, :].add(5.0))
  assert float(centernet_loss(outside, t)[0]) > float(centernet_loss(outputs, t)[0]) + 1.0


def test_decode_marks_empty_boxes_invalid_and_checks_the_stride():
  heat = np.full((1, 8, 8, 1), -10.0, np.float32)
  heat[0, 2, 2, 0] = heat[0, 5, 5, 0] = 10.0
  size = np.zeros((1, 8, 8, 2), np.float32)
  size[0, 2, 2] = (8, 8)
  size[0, 5, 5] = (-3, 8)  # a negative predicted width: an inverted box
  outputs = {"heatmap": jnp.asarray(heat), "offset": jnp.full((1, 8, 8, 2), 0.5), "size": jnp.asarray(size)}
  dets = centernet_decode(outputs, stride=STRIDE, k=3, image_shape=(32, 32))
  scores, valid = np.asarray(dets.scores[0]), np.asarray(dets.valid[0])
  np.testing.assert_array_equal(valid[scores > 0.5], [True, False])
  with pytest.raises(ValueError, match="does not cover"):
    centernet_decode(outputs, stride=STRIDE, k=3, image_shape=(40, 32))


def test_neck_must_have_three_steps():
  with pytest.raises(ValueError, match="three"):
    build_detector("centernet", num_classes=1, neck_features=(16, 16))
