"""YOLOv1: cell assignment, the responsible predictor and the loss against a NumPy transcription of the course's
terms (1)-(5); decoding; the module's shapes; a short training run that lowers the loss."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdet.models import build_detector
from jaxdet.models.detectors.yolov1 import _cells, responsible_predictor, yolov1_decode, yolov1_loss, yolov1_targets
from jaxdet.ops.coders import decode_yolov1
from jaxdet.train.state import create_train_state, train_step

IMAGE = 64
S = 4  # cells of 16 pixels


def iou_np(a, b):
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  area = lambda x: max(0.0, x[2] - x[0]) * max(0.0, x[3] - x[1])  # noqa: E731
  union = area(a) + area(b) - inter
  return inter / union if union > 0 and area(a) > 0 and area(b) > 0 else 0.0


def owners_np(gt_boxes, s=S, image=IMAGE):
  """The object each cell is responsible for: centre in the cell (half-open), the largest area, first on ties."""
  owner = {}
  for m, (x1, y1, x2, y2) in enumerate(gt_boxes):
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    cell = (min(int(np.floor(cy / (image / s))), s - 1), min(int(np.floor(cx / (image / s))), s - 1))
    area = (x2 - x1) * (y2 - y1)
    if cell not in owner or area > owner[cell][1]:
      owner[cell] = (m, area)
  return {cell: m for cell, (m, _) in owner.items()}


def pred_box_np(p, i, j, s=S, image=IMAGE):
  cx, cy = (j + p[0]) * image / s, (i + p[1]) * image / s
  w, h = p[2] ** 2 * image, p[3] ** 2 * image
  return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def loss_np(pred, conf, probs, gt_boxes, gt_labels, *, l_coord=5.0, l_noobj=0.5, s=S, image=IMAGE):
  """The course's YOLOv1 loss for one image, term by term, in float64 (section E2, terms (1)-(5))."""
  pred, conf, probs = (np.asarray(x, np.float64) for x in (pred, conf, probs))
  owner = owners_np(gt_boxes, s, image)
  num_boxes, num_classes = pred.shape[2], probs.shape[-1]
  terms = np.zeros(5)
  for i in range(s):
    for j in range(s):
      responsible = -1
      if (i, j) in owner:
        x1, y1, x2, y2 = gt_boxes[owner[(i, j)]]
        truth = np.array([x1, y1, x2, y2], np.float64)
        target = [(x1 + x2) / 2 / (image / s) - j, (y1 + y2) / 2 / (image / s) - i, np.sqrt((x2 - x1) / image),
                  np.sqrt((y2 - y1) / image)]
        ious = [iou_np(pred_box_np(pred[i, j, k], i, j, s, image), truth) for k in range(num_boxes)]
        if max(ious) > 0:
          responsible = int(np.argmax(ious))
        else:  # darknet's fallback: the closest box in (cx, cy, w, h), image units
          def rmse(k):
            b = pred_box_np(pred[i, j, k], i, j, s, image)
            d = np.array([(b[0] + b[2] - truth[0] - truth[2]) / 2, (b[1] + b[3] - truth[1] - truth[3]) / 2,
                          (b[2] - b[0]) - (truth[2] - truth[0]), (b[3] - b[1]) - (truth[3] - truth[1])]) / image
            return np.sqrt(np.sum(d ** 2))
          responsible = int(np.argmin([rmse(k) for k in range(num_boxes)]))
        p = pred[i, j, responsible]
        terms[0] += l_coord * ((p[0] - target[0]) ** 2 + (p[1] - target[1]) ** 2)  # (1)
        terms[1] += l_coord * ((p[2] - target[2]) ** 2 + (p[3] - target[3]) ** 2)  # (2)
        terms[2] += (conf[i, j, responsible] - ious[responsible]) ** 2  # (3)
        onehot = np.eye(num_classes)[gt_labels[owner[(i, j)]]]
        terms[4] += np.sum((probs[i, j] - onehot) ** 2)  # (5)
      for k in range(num_boxes):
        if k != responsible:
          terms[3] += l_noobj * conf[i, j, k] ** 2  # (4)
  return terms


def targets_for(boxes, labels):
  m = len(boxes)
  pad = 6
  b = np.zeros((pad, 4), np.float32)
  b[:m] = boxes
  lab = np.zeros(pad, np.int32)
  lab[:m] = labels
  valid = np.arange(pad) < m
  return yolov1_targets(b, lab, valid, np.zeros(pad, bool), grid_size=(S, S), image_size=(IMAGE, IMAGE))


def test_two_objects_in_one_cell_the_larger_is_kept():
  small, large = [2, 2, 10, 12], [0, 0, 15, 14]  # centres (6, 7) and (7.5, 7): both in cell (0, 0)
  for order in ([small, large], [large, small]):
    t = targets_for(np.array(order, np.float32), [1, 2] if order[0] is small else [2, 1])
    assert int(np.sum(t["object"])) == 1 and bool(t["object"][0, 0])
    np.testing.assert_allclose(t["box"][0, 0], large)
    assert int(t["label"][0, 0]) == 2
  same = np.array([[0, 0, 10, 10], [4, 4, 14, 14]], np.float32)  # equal areas, centres (5, 5), (9, 9): the first
  t = targets_for(same, [3, 4])
  np.testing.assert_allclose(t["box"][0, 0], same[0])
  assert int(t["label"][0, 0]) == 3


def test_object_centred_on_a_cell_border_goes_to_the_cell_below_right():
  boxes = np.array([[8, 20, 24, 28], [40, 8, 56, 24]], np.float32)  # centres (16, 24) and (48, 16)
  t = targets_for(boxes, [0, 1])
  assert set(zip(*np.nonzero(np.asarray(t["object"])))) == {(1, 1), (1, 3)}
  np.testing.assert_allclose(t["coords"][1, 1, :2], [0.0, 0.5], atol=1e-6)  # x on the cell's left edge
  np.testing.assert_allclose(t["coords"][1, 3, :2], [0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(t["coords"][1, 1, 2:], np.sqrt([16 / 64, 8 / 64]), atol=1e-6)
  # decode o encode: the targets are the boxes back
  np.testing.assert_allclose(decode_yolov1(t["coords"], _cells((S, S))[:, :, 0], grid_size=(S, S),
                                           image_size=(IMAGE, IMAGE))[1, 1], boxes[0], atol=1e-4)


def test_degenerate_crowd_and_padding_get_no_cell():
  boxes = np.array([[5, 5, 5, 20], [np.nan, 0, 3, 3], [30, 30, 40, 40], [1, 1, 60, 60]], np.float32)
  t = yolov1_targets(boxes, np.zeros(4, np.int32), np.array([True, True, True, False]), np.array([0, 0, 1, 0], bool),
                     grid_size=(S, S), image_size=(IMAGE, IMAGE))
  assert not np.any(t["object"])
  assert all(np.all(np.isfinite(np.asarray(v, np.float32))) for v in t.values())


def test_responsible_predictor_is_the_larger_iou_or_the_closest():
  truth = jnp.array([20.0, 20.0, 40.0, 40.0])
  boxes = jnp.array([[22.0, 22.0, 42.0, 42.0], [19.0, 19.0, 41.0, 41.0]])  # IoU 0.68 and 0.83
  assert int(responsible_predictor(boxes, truth, image_size=(64, 64))) == 1
  far = jnp.array([[0.0, 0.0, 5.0, 5.0], [50.0, 50.0, 60.0, 62.0]])  # both IoU 0: the closer in (cx, cy, w, h)
  assert int(responsible_predictor(far, truth, image_size=(64, 64))) == 1
  tie = jnp.array([[20.0, 20.0, 40.0, 40.0], [20.0, 20.0, 40.0, 40.0]])  # equal IoU: the first
  assert int(responsible_predictor(tie, truth, image_size=(64, 64))) == 0


def random_outputs(rng, b=1, nb=2, c=3):
  return {"boxes": jnp.asarray(rng.uniform(0.05, 0.95, (b, S, S, nb, 4)), jnp.float32),
          "confidence": jnp.asarray(rng.uniform(-0.2, 1.0, (b, S, S, nb)), jnp.float32),
          "classes": jnp.asarray(rng.uniform(-0.2, 1.0, (b, S, S, c)), jnp.float32)}


CASES = {
    "two objects in one cell": ([[2, 2, 10, 12], [0, 0, 15, 14], [30, 30, 50, 60]], [1, 2, 0]),
    "object on a cell border": ([[8, 20, 24, 28], [40, 8, 56, 24]], [0, 2]),
    "large and small": ([[0, 0, 64, 60], [50, 50, 58, 56], [20, 34, 30, 46]], [2, 1, 1]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", range(3))
def test_loss_matches_the_course_terms(case, seed):
  rng = np.random.default_rng(seed)
  boxes, labels = CASES[case]
  outputs = random_outputs(rng)
  if seed == 0:  # predictions that overlap the objects, so the IoU (not the fallback) picks the predictor
    t = targets_for(np.array(boxes, np.float32), labels)
    outputs["boxes"] = outputs["boxes"].at[0].set(t["coords"][:, :, None, :] + rng.normal(0, 0.05, (S, S, 2, 4)))
  t = jax.tree.map(lambda x: x[None], targets_for(np.array(boxes, np.float32), labels))
  loss, metrics = yolov1_loss(outputs, t, image_size=(IMAGE, IMAGE))
  want = loss_np(outputs["boxes"][0], outputs["confidence"][0], outputs["classes"][0], boxes, labels)
  got = [metrics[k] for k in ("xy_loss", "wh_loss", "obj_loss", "noobj_loss", "class_loss")]
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(loss, want.sum(), rtol=2e-5)


def test_loss_is_averaged_over_images_and_the_iou_target_has_no_gradient():
  rng = np.random.default_rng(3)
  boxes, labels = CASES["large and small"]
  t1 = targets_for(np.array(boxes, np.float32), labels)
  t = jax.tree.map(lambda x: jnp.stack([x, x]), t1)
  one = random_outputs(rng)
  two = jax.tree.map(lambda x: jnp.concatenate([x, x]), one)
  np.testing.assert_allclose(yolov1_loss(two, t, image_size=(IMAGE, IMAGE))[0],
                             yolov1_loss(one, jax.tree.map(lambda x: x[None], t1), image_size=(IMAGE, IMAGE))[0],
                             rtol=1e-6)
  # d loss / d box = 2 lambda_coord (box - target) at the responsible predictor only: the IoU in term (3) is a
  # constant target, so the box gets no gradient from it.
  batched = jax.tree.map(lambda x: x[None], t1)
  grads = jax.grad(lambda o: yolov1_loss(o, batched, image_size=(IMAGE, IMAGE))[0])(one)
  pred = np.asarray(one["boxes"][0])
  truth = np.asarray(batched["box"][0])
  best = np.asarray(responsible_predictor(decode_yolov1(one["boxes"], _cells((S, S)), grid_size=(S, S),
                                                        image_size=(IMAGE, IMAGE)), batched["box"],
                                          image_size=(IMAGE, IMAGE)))[0]
  want = np.zeros_like(pred)
  for i, j in zip(*np.nonzero(np.asarray(t1["object"]))):
    want[i, j, best[i, j]] = 10.0 * (pred[i, j, best[i, j]] - np.asarray(t1["coords"][i, j]))
  np.testing.assert_allclose(grads["boxes"][0], want, rtol=1e-5, atol=1e-6)
  assert truth.shape == (S, S, 4)


def test_decode_scores_boxes_by_class_probability_times_confidence():
  outputs = {"boxes": jnp.zeros((1, S, S, 2, 4)), "confidence": jnp.zeros((1, S, S, 2)),
             "classes": jnp.zeros((1, S, S, 3))}
  outputs["boxes"] = outputs["boxes"].at[0, 2, 1, 1].set(jnp.array([0.5, 0.25, 0.5, 0.25]))
  outputs["confidence"] = outputs["confidence"].at[0, 2, 1, 1].set(0.8)
  outputs["classes"] = outputs["classes"].at[0, 2, 1].set(jnp.array([0.1, 0.9, 1.3]))  # 1.3 clips to 1
  dets = yolov1_decode(outputs, image_size=(IMAGE, IMAGE), score_threshold=0.05)
  valid = np.asarray(dets.valid[0])
  assert valid.sum() == 3
  np.testing.assert_allclose(dets.scores[0][valid], [0.8, 0.72, 0.08], rtol=1e-6)
  np.testing.assert_array_equal(dets.classes[0][valid], [2, 1, 0])
  # centre ((1 + 0.5) * 16, (2 + 0.25) * 16) = (24, 36), size (0.25 * 64, 0.0625 * 64) = (16, 4)
  np.testing.assert_allclose(dets.boxes[0, 0], [16, 34, 32, 38], atol=1e-5)


def tiny_batch(rng, b=4, size=IMAGE):
  xy = rng.uniform(0, size - 24, (b, 3, 2))
  wh = rng.uniform(8, 24, (b, 3, 2))
  return {"image": jnp.asarray(rng.integers(0, 255, (b, size, size, 3)), jnp.uint8),
          "boxes": jnp.asarray(np.concatenate([xy, xy + wh], -1), jnp.float32),
          "labels": jnp.asarray(rng.integers(0, 3, (b, 3)), jnp.int32), "valid": jnp.ones((b, 3), bool),
          "crowd": jnp.zeros((b, 3), bool)}


@pytest.mark.parametrize("fast, convs", [(False, 24), (True, 8)])
def test_module_layers_and_output_shapes(fast, convs):
  detector = build_detector("yolov1", num_classes=3, width=8, output_stride=16, fast=fast, hidden=64)
  images = jnp.zeros((2, IMAGE, IMAGE, 3), jnp.uint8)
  variables = jax.eval_shape(lambda: detector.module.init(jax.random.PRNGKey(0), images, train=False))
  assert len([k for k in variables["params"]["backbone"]["stack"] if k.startswith("conv")]) == convs
  outputs = jax.eval_shape(lambda v: detector.module.apply(v, images, train=False), variables)
  chex.assert_shape([outputs["boxes"], outputs["confidence"], outputs["classes"]],
                    [(2, 4, 4, 2, 4), (2, 4, 4, 2), (2, 4, 4, 3)])


def test_a_short_run_lowers_the_loss():
  detector = build_detector("yolov1", num_classes=3, width=8, output_stride=16, fast=True, hidden=64)
  batch = tiny_batch(np.random.default_rng(0))
  tx = optax.adam(3e-3)
  state = create_train_state(detector, tx, image_shape=(IMAGE, IMAGE), seed=0)
  step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=lambda s: 3e-3))
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert all(np.isfinite(losses)) and bool(metrics["finite"])
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_dropout_draws_from_the_dropout_stream():
  detector = build_detector("yolov1", num_classes=3, width=4, output_stride=16, fast=True, hidden=32)
  batch = tiny_batch(np.random.default_rng(1), b=2)
  variables = jax.jit(lambda k: detector.module.init(k, batch["image"], train=False))(jax.random.PRNGKey(0))
  run = jax.jit(lambda key: detector.module.apply(variables, batch["image"], train=True, rngs={"dropout": key},
                                                  mutable=["batch_stats"])[0]["confidence"])
  a, b, a2 = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2)), run(jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, a2)
  assert not np.allclose(a, b)


def test_reference_head_is_locally_connected_then_one_linear_layer():
  """darknet's `yolov1.cfg` head: a 3x3 locally connected layer (weights per cell) then the output layer."""
  from jaxdet.models.heads.yolo import YOLOv1Head  # pylint: disable=g-import-not-at-top
  head = YOLOv1Head(num_classes=3, hidden=0, local_filters=5, dropout=0.0)
  features = jax.random.normal(jax.random.PRNGKey(0), (2, S, S, 6))
  variables = head.init(jax.random.PRNGKey(1), features, train=False)
  assert set(variables["params"]) == {"local", "fc2"}  # no hidden fully connected layer
  assert variables["params"]["fc2"]["kernel"].shape == (S * S * 5, S * S * (5 * 2 + 3))
  layer = nn.ConvLocal(5, (3, 3), padding="SAME")
  local = lambda x: layer.apply({"params": variables["params"]["local"]}, x)  # noqa: E731
  # A change at one cell reaches only the 3x3 neighbourhood of the locally connected layer ...
  moved = features.at[:, 1, 2].add(1.0)
  changed = np.any(np.abs(np.asarray(local(moved) - local(features))) > 0, axis=(0, 3))
  cells = np.arange(S)
  np.testing.assert_array_equal(changed, (np.abs(cells - 1) <= 1)[:, None] & (np.abs(cells - 2) <= 1)[None, :])
  # ... and its weights are not shared: the same patch at two cells gives different outputs.
  flat = jnp.ones((1, S, S, 6))
  out = np.asarray(local(flat))
  assert not np.allclose(out[0, 1, 1], out[0, 2, 2])
  outputs = head.apply(variables, features, train=False)
  chex.assert_shape([outputs["boxes"], outputs["confidence"], outputs["classes"]],
                    [(2, S, S, 2, 4), (2, S, S, 2), (2, S, S, 3)])


def test_passthrough_option_adds_the_reorganised_stride_8_features():
  """The diagnosis option (YOLOv2's passthrough on YOLOv1): 4 x (2 width) more channels per cell reach the head."""
  images = jnp.zeros((1, IMAGE, IMAGE, 3), jnp.uint8)
  shapes = {}
  for passthrough in (False, True):
    detector = build_detector("yolov1", num_classes=3, width=8, output_stride=16, fast=True, hidden=64,
                              passthrough=passthrough)
    variables = jax.eval_shape(lambda d=detector: d.module.init(jax.random.PRNGKey(0), images, train=False))
    assert ("passthrough" in variables["params"]) == passthrough
    shapes[passthrough] = variables["params"]["head"]["fc1"]["kernel"].shape
  assert shapes[True][0] - shapes[False][0] == S * S * 4 * 2 * 8


def test_shared_head_applies_one_per_cell_regressor_to_every_cell():
  """The diagnosis option (`shared=True`): the head's two layers are 1 x 1 convolutions, so each cell's outputs are
  the same function of that cell's features alone, whatever the cell."""
  from jaxdet.models.heads.yolo import YOLOv1Head  # pylint: disable=g-import-not-at-top
  head = YOLOv1Head(num_classes=3, hidden=7, dropout=0.0, shared=True)
  features = jax.random.normal(jax.random.PRNGKey(0), (2, S, S, 6))
  variables = head.init(jax.random.PRNGKey(1), features, train=False)
  chex.assert_shape([variables["params"]["fc1"]["kernel"], variables["params"]["fc2"]["kernel"]],
                    [(1, 1, 6, 7), (1, 1, 7, 5 * 2 + 3)])
  outputs = head.apply(variables, features, train=False)
  chex.assert_shape([outputs["boxes"], outputs["confidence"], outputs["classes"]],
                    [(2, S, S, 2, 4), (2, S, S, 2), (2, S, S, 3)])
  # Copying one cell's features to another copies its outputs; changing one cell changes only that cell.
  copied = features.at[:, 3, 0].set(features[:, 1, 2])
  out = head.apply(variables, copied, train=False)
  np.testing.assert_allclose(out["boxes"][:, 3, 0], out["boxes"][:, 1, 2], rtol=1e-6)
  np.testing.assert_allclose(out["classes"][:, 3, 0], out["classes"][:, 1, 2], rtol=1e-6)
  changed = np.any(np.abs(np.asarray(out["confidence"] - outputs["confidence"])) > 0, axis=(0, 3))
  expected = np.zeros((S, S), bool)
  expected[3, 0] = True
  np.testing.assert_array_equal(changed, expected)
  detector = build_detector("yolov1", num_classes=3, width=8, output_stride=16, fast=True, hidden=64,
                            shared_head=True)
  images = jnp.zeros((1, IMAGE, IMAGE, 3), jnp.uint8)
  variables = jax.eval_shape(lambda: detector.module.init(jax.random.PRNGKey(0), images, train=False))
  assert variables["params"]["head"]["fc2"]["kernel"].shape == (1, 1, 64, 13)


def test_darknet19_backbone_option_swaps_the_network_and_keeps_the_grid():
  """The diagnosis option (YOLOv2's network under YOLOv1's head and loss): Darknet-19's 18 convolutions at its own
  width (last stage 32 x width channels) feed the same S x S head; Fast YOLO does not combine with it."""
  images = jnp.zeros((1, IMAGE, IMAGE, 3), jnp.uint8)
  detector = build_detector("yolov1", num_classes=3, width=4, output_stride=16, hidden=16, backbone="darknet19",
                            passthrough=True)
  variables = jax.eval_shape(lambda: detector.module.init(jax.random.PRNGKey(0), images, train=False))
  convs = variables["params"]["backbone"]["stack"]
  assert len(convs) == 18 and convs["conv18"]["conv"]["kernel"].shape[-1] == 32 * 4
  outputs = jax.eval_shape(lambda v: detector.module.apply(v, images, train=False), variables)
  chex.assert_shape(outputs["boxes"], (1, S, S, 2, 4))
  # The head reads Darknet-19's last map and the passthrough's 4 x (2 width) channels per cell.
  assert variables["params"]["head"]["fc1"]["kernel"].shape[0] == S * S * (32 * 4 + 4 * 2 * 4)
  with pytest.raises(ValueError, match="Fast YOLO"):
    build_detector("yolov1", num_classes=3, backbone="darknet19", fast=True)
  with pytest.raises(ValueError, match="backbone"):
    build_detector("yolov1", num_classes=3, backbone="resnet")


def _linear_and_option_heads(**option):
  """Outputs of the paper's linear `YOLOv1Head` and of the same head with a diagnosis `option`, with the same weights
  (the option adds no parameters)."""
  from jaxdet.models.heads.yolo import YOLOv1Head  # pylint: disable=g-import-not-at-top
  features = jax.random.normal(jax.random.PRNGKey(0), (2, S, S, 6))
  variables = YOLOv1Head(num_classes=3, hidden=7, dropout=0.0).init(jax.random.PRNGKey(1), features, train=False)
  plain = YOLOv1Head(num_classes=3, hidden=7, dropout=0.0).apply(variables, features, train=False)
  return plain, YOLOv1Head(num_classes=3, hidden=7, dropout=0.0, **option).apply(variables, features, train=False)


def test_sigmoid_xy_option_squashes_only_the_centre():
  """The diagnosis option (YOLOv2's logistic centre): with the same weights, (x, y) become sigma of the linear head's
  and every other output is unchanged."""
  plain, squashed = _linear_and_option_heads(sigmoid_xy=True)
  np.testing.assert_allclose(squashed["boxes"][..., :2], jax.nn.sigmoid(plain["boxes"][..., :2]), rtol=1e-6)
  np.testing.assert_array_equal(squashed["boxes"][..., 2:], plain["boxes"][..., 2:])
  np.testing.assert_array_equal(squashed["confidence"], plain["confidence"])
  np.testing.assert_array_equal(squashed["classes"], plain["classes"])


def test_detect_convs_option_adds_3x3_layers_before_the_head():
  """The diagnosis option (YOLOv2's detection layers): k 3 x 3 convolutions of the network's last-map channels after
  the passthrough, so the head reads their output."""
  images = jnp.zeros((1, IMAGE, IMAGE, 3), jnp.uint8)
  detector = build_detector("yolov1", num_classes=3, width=4, output_stride=16, hidden=16, backbone="darknet19",
                            passthrough=True, detect_convs=2)
  variables = jax.eval_shape(lambda: detector.module.init(jax.random.PRNGKey(0), images, train=False))
  params = variables["params"]
  chex.assert_shape([params["detect1"]["conv"]["kernel"], params["detect2"]["conv"]["kernel"]],
                    [(3, 3, 32 * 4 + 4 * 2 * 4, 32 * 4), (3, 3, 32 * 4, 32 * 4)])
  assert params["head"]["fc1"]["kernel"].shape[0] == S * S * 32 * 4


def test_yolov2_scores_option_scores_and_trains_classes_as_yolov2():
  """The diagnosis option (YOLOv2's scoring): with the same weights the confidence is sigma of the linear head's and
  the classes its softmax; the loss's class term is then the softmax cross-entropy (NumPy) in the object cells."""
  plain, scored = _linear_and_option_heads(yolov2_scores=True)
  np.testing.assert_array_equal(scored["boxes"], plain["boxes"])
  np.testing.assert_allclose(scored["confidence"], jax.nn.sigmoid(plain["confidence"]), rtol=1e-6)
  np.testing.assert_allclose(scored["classes"], jax.nn.softmax(plain["classes"]), rtol=1e-6)
  np.testing.assert_array_equal(scored["class_logits"], plain["classes"])

  boxes = jnp.array([[[4.0, 4.0, 12.0, 14.0], [30.0, 20.0, 60.0, 44.0]]] * 2)
  labels = jnp.array([[2, 0], [1, 1]])
  valid = jnp.ones((2, 2), bool)
  targets = jax.vmap(functools.partial(yolov1_targets, grid_size=(S, S), image_size=(IMAGE, IMAGE)))(
      boxes, labels, valid, ~valid)
  _, with_ce = yolov1_loss(scored, targets, image_size=(IMAGE, IMAGE))
  _, with_mse = yolov1_loss({k: v for k, v in scored.items() if k != "class_logits"}, targets,
                            image_size=(IMAGE, IMAGE))
  logits = np.asarray(plain["classes"], np.float64)
  log_p = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  mask = np.asarray(targets["object"])
  label = np.asarray(targets["label"])
  expected = -np.sum(np.take_along_axis(log_p, label[..., None], -1)[..., 0][mask]) / 2
  np.testing.assert_allclose(with_ce["class_loss"], expected, rtol=1e-5)
  # The other terms do not depend on how the classes are trained.
  for key in ("xy_loss", "wh_loss", "obj_loss", "noobj_loss"):
    np.testing.assert_allclose(with_ce[key], with_mse[key], rtol=1e-6)
