"""YOLOv4's tricks on YOLOv3's shared head code: several anchors per truth above a shape-IoU threshold against a
NumPy transcription of darknet's assignment; grid-sensitivity decoding and its x, y targets; label-smoothed class
targets and the CIoU box term (through the loss gradient); self-adversarial training (the attacked image lowers the
network's objectness on its objects and stays in the pixel range); the detector's output shapes with and without
jit, DIoU-NMS in its post-processing, and a short run with every trick on. CmBN: tests/models/test_cmbn.py."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdet.models import build_detector
from jaxdet.models.heads.yolo_loss import decode_yolo_boxes, offset_targets
from jaxdet.ops.losses import ciou_loss
from jaxdet.train.state import create_train_state, train_step
from tests.models.test_yolov1 import tiny_batch
from tests.models.test_yolov2 import flat_index, shape_iou_np, sigmoid
from tests.models.test_yolov3 import ANCHORS, HAND_MADE, IMAGE, batch_of, levels, raw_near, split_raw

TINY = dict(num_classes=3, anchors=ANCHORS, width=2, depths=(1, 1, 0, 0, 0))  # few layers to compile


def detector(**kw):
  return build_detector("yolov4", **{**TINY, **kw})


def assign_multi_np(boxes, levels_, threshold):
  """darknet's yolo-layer assignment with `iou_thresh`, transcribed: for each truth (in order), its best anchor over
  every scale (first on ties) and every other anchor whose shape IoU exceeds `threshold`, each in the cell of its
  scale holding the centre; a predictor claimed twice keeps the larger box (the first listed on ties).
  Returns {(level, i, j, a): m}."""
  anchors = [(lv, a, wh) for lv, (_, _, anc) in enumerate(levels_) for a, wh in enumerate(anc)]
  owner = {}
  for m, (x1, y1, x2, y2) in enumerate(boxes):
    wh = (x2 - x1, y2 - y1)
    ious = [shape_iou_np(wh, anc) for _, _, anc in anchors]
    best = int(np.argmax(ious))
    for k, (lv, a, _) in enumerate(anchors):
      if k != best and not ious[k] > threshold:
        continue
      (h, w), stride, _ = levels_[lv]
      cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
      key = (lv, min(int(np.floor(cy / stride)), h - 1), min(int(np.floor(cx / stride)), w - 1), a)
      area = wh[0] * wh[1]
      if key not in owner or area > owner[key][1]:
        owner[key] = (m, area)
  return {k: m for k, (m, _) in owner.items()}


_XY, _WH = np.random.default_rng(7).uniform(0, 32, (8, 2)), np.random.default_rng(8).uniform(5, 32, (8, 2))
CASES = {**HAND_MADE, "random": (np.concatenate([_XY, _XY + _WH], 1).tolist(), [0, 1, 2] * 2 + [0, 1])}


@pytest.mark.parametrize("threshold", [0.213, 0.5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_several_anchors_per_truth_above_the_threshold_as_the_reference(case, threshold):
  boxes, labels = CASES[case]
  det = detector(anchor_iou_threshold=threshold)
  t = jax.tree.map(lambda x: x[0], jax.jit(det.assign)(batch_of(boxes, labels)))
  lvls = levels()
  want = {flat_index(k, lvls): m for k, m in assign_multi_np(np.asarray(boxes, np.float64), lvls, threshold).items()}
  np.testing.assert_array_equal(np.nonzero(np.asarray(t["positive"]))[0], sorted(want))
  for n, m in want.items():
    np.testing.assert_allclose(t["box"][n], boxes[m], rtol=1e-6)
    assert int(t["label"][n]) == labels[m]
    a = n  # the anchor of predictor n: its index within its cell, offset by the anchors of the coarser levels
    for lv, ((h, w), _, anc) in enumerate(lvls):
      if a < h * w * len(anc):
        wh = anc[a % len(anc)]
        break
      a -= h * w * len(anc)
    bw, bh = boxes[m][2] - boxes[m][0], boxes[m][3] - boxes[m][1]
    np.testing.assert_allclose(t["log_wh"][n], np.log([bw / wh[0], bh / wh[1]]), rtol=1e-5, atol=1e-6)


def test_more_positives_than_yolov3_and_threshold_one_is_yolov3():
  boxes, labels = HAND_MADE["nested"]  # 6, 16, 32 px squares: 16 x 16 also matches 14 x 30 and 30 x 14 above 0.213
  batch = batch_of(boxes, labels)
  v3 = build_detector("yolov3", num_classes=3, anchors=ANCHORS, width=2).assign(batch)
  off = detector(anchor_iou_threshold=1.0).assign(batch)
  on = detector(anchor_iou_threshold=0.213).assign(batch)
  for key in v3:
    np.testing.assert_array_equal(off[key], v3[key], err_msg=key)
  assert int(on["positive"].sum()) > int(v3["positive"].sum()) == 3
  assert bool(jnp.all(on["positive"] >= v3["positive"]))


def test_grid_sensitivity_decoding_and_its_targets():
  lvls = levels()
  grids, strides, anchors = [g for g, _, _ in lvls], [s for _, s, _ in lvls], [jnp.asarray(a) for _, _, a in lvls]
  n = sum(h * w * 3 for h, w in grids)
  raw = (np.random.default_rng(0).normal(0, 1, (n, 4)) * [3, 3, 1, 1]).astype(np.float32)  # sizes below the clamp
  raw[:3, :2] = [[-40, -40], [40, 40], [0, 0]]  # the extremes and the middle of the first cell
  scales = (1.2, 1.1, 1.05)
  got = np.asarray(decode_yolo_boxes(jnp.asarray(raw), grid_shapes=grids, strides=strides, anchors=anchors,
                                     xy_scale=scales))
  k = 0
  for (h, w), stride, anc in lvls:
    s = scales[strides.index(stride)]
    for i in range(h):
      for j in range(w):
        for aw, ah in anc:
          cx = (s * sigmoid(raw[k, 0]) - (s - 1) / 2 + j) * stride  # darknet: x * scale_x_y - 0.5 (scale_x_y - 1)
          cy = (s * sigmoid(raw[k, 1]) - (s - 1) / 2 + i) * stride
          bw, bh = aw * np.exp(raw[k, 2]), ah * np.exp(raw[k, 3])
          np.testing.assert_allclose(got[k], [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], rtol=1e-5, atol=1e-3)
          k += 1
  # s = 1.2 at stride 8: the centre spans [-0.1, 1.1] cells, so it reaches the cell's borders at finite t
  np.testing.assert_allclose((got[:3, 0] + got[:3, 2]) / 2, [-0.8, 8.8, 4.0], atol=1e-4)
  # the targets of sigma(t) put the decoded centre back on the offset
  offsets = jnp.array([[0.0, 1.0], [0.5, 0.25]])
  np.testing.assert_allclose(1.2 * offset_targets(offsets, 1.2) - 0.1, offsets, atol=1e-6)
  np.testing.assert_allclose(offset_targets(offsets, 1.0), offsets)


def test_xy_targets_label_smoothing_and_ciou_box_term_through_the_gradient():
  """d loss / d raw on a responsible predictor: (2 - w h)(sigma(t_xy) - offset_targets) on x, y under grid
  sensitivity; sigma(class logit) - ((1 - eps) one_hot + eps / C) on the classes; with the CIoU box loss the box
  term is the sum of 1 - CIoU over the responsible predictors per image."""
  boxes, labels = HAND_MADE["nested"]
  lvls, eps, scales = levels(), 0.1, (1.2, 1.1, 1.05)
  det = detector(xy_scale=scales, label_smoothing=eps)
  targets = det.assign(batch_of(boxes, labels))
  t = jax.tree.map(lambda x: x[0], targets)
  raw = raw_near(t, np.random.default_rng(3), boxes, lvls)
  grads = np.asarray(jnp.concatenate([g.reshape(-1, 8) for g in jax.grad(
      lambda r: det.loss({"raw": r}, targets)[0])(split_raw(raw, lvls))]))
  pos = np.nonzero(np.asarray(t["positive"]))[0]
  assert len(pos) == 3
  sizes = np.cumsum([h * w * 3 for (h, w), _, _ in lvls])
  for n in pos:
    s = scales[int(np.searchsorted(sizes, n, side="right"))]
    target = (np.asarray(t["offset"][n]) + (s - 1) / 2) / s
    np.testing.assert_allclose(grads[n, :2], (2 - float(t["area"][n])) * (sigmoid(raw[n, :2]) - target), rtol=1e-4)
    smooth = np.eye(3)[int(t["label"][n])] * (1 - eps) + eps / 3
    np.testing.assert_allclose(grads[n, 5:], sigmoid(raw[n, 5:]) - smooth, rtol=1e-4, atol=1e-6)

  ciou = detector(box_loss="ciou", xy_scale=scales)
  _, metrics = ciou.loss({"raw": split_raw(raw, lvls)}, targets)
  pred = decode_yolo_boxes(jnp.asarray(raw)[None], grid_shapes=[g for g, _, _ in lvls], strides=[8, 16, 32],
                           anchors=[jnp.asarray(a) for _, _, a in lvls], xy_scale=scales)[0]
  np.testing.assert_allclose(metrics["box_loss"], np.sum(np.asarray(ciou_loss(pred, t["box"]))[pos]), rtol=1e-5)
  assert "xy_loss" not in metrics and "box_loss" not in det.loss({"raw": split_raw(raw, lvls)}, targets)[1]
  with pytest.raises(ValueError, match="box_loss"):
    detector(box_loss="giou").loss({"raw": split_raw(raw, lvls)}, targets)


@pytest.fixture(scope="module")
def trained():
  """A tiny YOLOv4 after 15 steps on one batch (every trick on, SAT on every step), with its batch."""
  det = detector(cmbn=2, sat_steps=1, sat_prob=1.0, box_loss="ciou", nms="diou", xy_scale=(1.2, 1.1, 1.05),
                 anchor_iou_threshold=0.213, label_smoothing=0.1)
  tx = optax.adam(3e-3)
  state = create_train_state(det, tx, image_shape=(IMAGE, IMAGE), seed=0)
  step = jax.jit(functools.partial(train_step, detector=det, tx=tx, schedule=lambda s: 3e-3))
  batch = tiny_batch(np.random.default_rng(0), size=IMAGE)
  losses = []
  for _ in range(15):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return det, state, batch, losses, metrics


def test_a_short_run_with_every_trick_lowers_the_loss(trained):
  _, _, _, losses, metrics = trained
  assert bool(metrics["finite"]) and np.all(np.isfinite(losses))
  # slower than YOLOv3's run (< 0.7 in 20 steps): every step trains on images attacked against it, and the CIoU and
  # smoothed-class terms have floors; a 10-step run of this set-up went from 218 to 199 (0.91)
  assert np.mean(losses[-3:]) < 0.95 * np.mean(losses[:3]), losses


def test_self_adversarial_images_ascend_the_objects_loss_lower_their_objectness_and_stay_in_pixel_range(trained):
  """Stage 1 of SAT against a transcription of its objective: the mean -log sigmoid(t_o) over the predictors
  responsible for objects, the network run as in training (batch statistics).

  At the config's epsilon (4 pixels) the altered image is exactly one signed-gradient step of that objective,
  clipped to [0, 255]. Whether such a step lowers objectness depends on the network: this one (15 steps on noise
  images, batch norm over 4 images) is linear in its input only up to a signed step of about 0.01 pixel (measured:
  0.001 realises 88% of the first-order rise, 0.01 75%, 0.05 none), so the effect is checked at 0.002 pixel, where
  the attack must realise half its first-order rise and lower objectness far beyond noise of the same size."""
  det, state, batch, _, _ = trained
  variables, targets = state.variables(), det.assign(batch)
  rngs = {"dropout": jax.random.PRNGKey(0), "sampling": jax.random.PRNGKey(1)}
  pos = targets["positive"]

  @jax.jit
  def hidden(images):  # (the attacked objective, the mean objectness of the responsible predictors)
    outputs, _ = det.module.apply(variables, images, train=True, mutable=["batch_stats"])
    o = jnp.concatenate([r[..., 4].reshape(r.shape[0], -1) for r in outputs["raw"]], axis=1)
    mean = lambda v: jnp.sum(jnp.where(pos, v, 0)) / jnp.sum(pos)  # noqa: E731
    return mean(jax.nn.softplus(-o)), mean(jax.nn.sigmoid(o))

  x = jnp.asarray(batch["image"], jnp.float32)
  grad = np.asarray(jax.jit(jax.grad(lambda v: hidden(v)[0]))(x))
  altered = jax.jit(det.alter_batch)(variables, batch, targets, rngs)
  image = np.asarray(altered["image"])
  assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 255
  assert all(np.array_equal(altered[k], batch[k]) for k in batch if k != "image")
  assert np.abs(image - np.asarray(x)).max() <= 4.0 + 1e-4
  sure = np.abs(grad) > 1e-4 * np.abs(grad).max()  # signs that float rounding cannot flip
  assert sure.mean() > 0.5
  np.testing.assert_array_equal(image[sure], np.clip(np.asarray(x) + 4.0 * np.sign(grad), 0, 255)[sure])

  # The same step, smaller: the attack's direction (the signs checked above) at 0.002 pixel.
  epsilon = 0.002
  attacked = x + epsilon * jnp.sign(grad)
  noisy = x + epsilon * jax.random.rademacher(jax.random.PRNGKey(2), x.shape, jnp.float32)
  (loss, seen), (loss_attacked, seen_attacked), (_, seen_noisy) = hidden(x), hidden(attacked), hidden(noisy)
  rise = float(loss_attacked - loss)
  assert rise > 0.5 * epsilon * np.abs(grad).sum(), (rise, epsilon * np.abs(grad).sum())
  drop, noise_drop = float(seen - seen_attacked), float(seen - seen_noisy)
  assert drop > 10 * abs(noise_drop), (float(seen), float(seen_attacked), float(seen_noisy))


def test_self_adversarial_training_attacks_the_drawn_fraction_of_steps(trained):
  """`sat_prob` is the detector's `alter_prob` (the trainer draws the attacked steps: `alters_step`, tested with the
  contract); a step drawn clean is exactly the step of the same network without SAT, the attack not in its program."""
  det, _, batch, _, _ = trained
  half = detector(cmbn=2, sat_steps=1)
  assert half.alter_prob == 0.5 and det.alter_prob == 1.0  # darknet's half by default
  tx = optax.adam(3e-3)
  step = lambda d, alter: jax.jit(functools.partial(  # noqa: E731
      train_step, detector=d, tx=tx, schedule=lambda s: 3e-3, alter=alter))
  start = create_train_state(half, tx, image_shape=(IMAGE, IMAGE), seed=0)
  clean, clean_metrics = step(half, False)(start, batch)
  plain, plain_metrics = step(detector(cmbn=2), True)(start, batch)
  chex.assert_trees_all_equal(clean.params, plain.params)
  assert float(clean_metrics["loss"]) == float(plain_metrics["loss"])


class OutputShapesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_output_shapes_and_diou_nms_postprocess(self):
    det = detector(nms="diou", xy_scale=(1.2, 1.1, 1.05))
    images = jnp.zeros((2, 64, 96, 3), jnp.uint8)
    variables = det.module.init(jax.random.PRNGKey(0), images[:1], train=False)
    outputs = self.variant(lambda v, x: det.module.apply(v, x, train=False))(variables, images)
    chex.assert_shape(outputs["raw"], [(2, 8, 12, 3, 8), (2, 4, 6, 3, 8), (2, 2, 3, 3, 8)])
    dets = self.variant(functools.partial(det.postprocess, image_shape=(64, 96)))(outputs)
    chex.assert_shape([dets.boxes, dets.scores, dets.classes, dets.valid],
                      [(2, 100, 4), (2, 100), (2, 100), (2, 100)])
    assert bool(jnp.all((dets.scores >= 0) & (dets.scores <= 1)))
    assert "sam8" in variables["params"] and "spp" not in variables["params"]["neck"]  # SPP has no parameters


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="anchor_iou_threshold"):
    detector(anchor_iou_threshold=1.5)
  with pytest.raises(ValueError, match="sat_steps"):
    detector(sat_steps=-1)
  with pytest.raises(ValueError, match="sat_prob"):
    detector(sat_steps=1, sat_prob=0.0)
  with pytest.raises(ValueError, match="xy_scale"):
    detector(xy_scale=(1.1, 1.2))
