"""YOLOv3: multi-scale assignment (scale and anchor by shape IoU over all nine anchors, cell by centre) and the ignore
mask over every scale's predictions against a NumPy loop transcription of darknet's yolo layer; the loss terms and
their gradients (darknet's deltas); Darknet-53 and the neck's shapes; output shapes with and without jit; a short
run that lowers the loss."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdet.models import build_detector
from jaxdet.models.backbones.darknet import Darknet53
from jaxdet.models.detectors.yolov3 import split_anchors
from jaxdet.models.necks.yolov3 import YOLOv3Neck, upsample_nearest
from jaxdet.train.state import create_train_state, train_step
from tests.models.test_yolov1 import iou_np, tiny_batch
from tests.models.test_yolov2 import assign_np, flat_index, sigmoid

IMAGE = 64
STRIDES = (8, 16, 32)
# sorted by area: three per scale, the smallest at stride 8
ANCHORS = np.array([[6, 6], [8, 14], [14, 8], [16, 16], [14, 30], [30, 14], [32, 32], [30, 56], [56, 30]],
                   np.float32)


def levels(height=IMAGE, width=IMAGE):
  return [((height // s, width // s), s, ANCHORS[3 * k:3 * k + 3]) for k, s in enumerate(STRIDES)]


def detector(**kw):
  return build_detector("yolov3", **{**dict(num_classes=3, anchors=ANCHORS, width=2, depths=(1, 1, 1, 1, 1)), **kw})


def batch_of(boxes, labels, crowd=None, height=IMAGE, width=IMAGE):
  m = len(boxes)
  crowd = np.zeros(m, bool) if crowd is None else np.asarray(crowd)
  return {"image": jnp.zeros((1, height, width, 3), jnp.uint8), "boxes": jnp.asarray([boxes], jnp.float32),
          "labels": jnp.asarray([labels], jnp.int32), "valid": jnp.ones((1, m), bool),
          "crowd": jnp.asarray(crowd[None])}


def bce(x, t):
  return -(t * np.log(sigmoid(x)) + (1 - t) * np.log(sigmoid(-x)))


def loss_np(raw, boxes, labels, crowd, lvls, *, image, thresh=0.5):
  """darknet's yolo-layer deltas as a loss for one image (BCE where the delta is target - sigma, 1/2 on squares),
  float64, looping over every predictor of every scale; also the number of ignored predictors."""
  raw = np.asarray(raw, np.float64)
  valid = np.ones(len(boxes), bool)
  resp = {flat_index(k, lvls): m for k, m in assign_np(boxes, valid, crowd, lvls).items()}
  truths = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]  # crowds too: they silence predictions on them
  terms = dict(xy=0.0, wh=0.0, obj=0.0, noobj=0.0, class_=0.0)
  n, ignored = 0, 0
  for (h, w), stride, anc in lvls:
    for i in range(h):
      for j in range(w):
        for aw, ah in anc:
          t = raw[n]
          cx, cy = (sigmoid(t[0]) + j) * stride, (sigmoid(t[1]) + i) * stride
          pw, ph = aw * np.exp(t[2]), ah * np.exp(t[3])
          pred = [cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2]
          if n in resp:
            x1, y1, x2, y2 = boxes[resp[n]]
            tx, ty = (x1 + x2) / 2 / stride - j, (y1 + y2) / 2 / stride - i
            tw, th = np.log((x2 - x1) / aw), np.log((y2 - y1) / ah)
            scale = 2 - (x2 - x1) * (y2 - y1) / image ** 2
            terms["xy"] += scale * (bce(t[0], tx) + bce(t[1], ty))
            terms["wh"] += 0.5 * scale * ((t[2] - tw) ** 2 + (t[3] - th) ** 2)
            terms["obj"] += bce(t[4], 1.0)
            terms["class_"] += sum(bce(t[5 + c], float(c == labels[resp[n]])) for c in range(len(t) - 5))
          elif max([iou_np(pred, b) for b in truths], default=0.0) > thresh:
            ignored += 1
          else:
            terms["noobj"] += bce(t[4], 0.0)
          n += 1
  return terms, ignored


HAND_MADE = {
    # 6 x 6: the smallest anchor, so stride 8, cell (0, 0)
    "small box": ([[2, 2, 8, 8]], [0]),
    # 14 x 30 equals anchor 4 (stride 16, index 1); centre (27, 19): cell (1, 1)
    "tall box": ([[20, 4, 34, 34]], [1]),
    # 50 x 62: IoU 0.54 with 30 x 56 (stride 32, index 1), 0.46 with 56 x 30, 0.33 with 32 x 32
    "big box": ([[4, 0, 54, 62]], [2]),
    # one centre (32, 32), three sizes: three scales; centre on a cell border: the cell below and to the right
    "nested": ([[29, 29, 35, 35], [24, 24, 40, 40], [16, 16, 48, 48]], [0, 1, 2]),
    # two 8 x 14 boxes in stride-8 cell (1, 1): one predictor, the larger box keeps it; a third elsewhere
    "shared predictor": ([[8, 6, 16, 20], [9, 8, 17, 23], [40, 40, 48, 54]], [0, 1, 2]),
}


@pytest.mark.parametrize("height, width", [(64, 64), (64, 96)])
@pytest.mark.parametrize("case", sorted(HAND_MADE))
def test_assignment_picks_scale_anchor_and_cell_as_the_reference(case, height, width):
  boxes, labels = HAND_MADE[case]
  det = detector()
  t = jax.tree.map(lambda x: x[0], jax.jit(det.assign)(batch_of(boxes, labels, height=height, width=width)))
  lvls = levels(height, width)
  want = {flat_index(k, lvls): m for k, m in assign_np(boxes, np.ones(len(boxes), bool), np.zeros(len(boxes), bool),
                                                       lvls).items()}
  np.testing.assert_array_equal(np.nonzero(np.asarray(t["positive"]))[0], sorted(want))
  for n, m in want.items():
    np.testing.assert_allclose(t["box"][n], boxes[m])
    assert int(t["label"][n]) == labels[m]
  assert t["positive"].shape == (sum(h * w * 3 for (h, w), _, _ in lvls),)


def test_hand_made_assignments_by_hand():
  lvls = levels()
  at = lambda lv, i, j, a: flat_index((lv, i, j, a), lvls)  # noqa: E731
  expected = {"small box": [at(0, 0, 0, 0)], "tall box": [at(1, 1, 1, 1)], "big box": [at(2, 0, 0, 1)],
              # 6 x 6 -> stride 8 cell (4, 4); 16 x 16 -> stride 16 cell (2, 2); 32 x 32 -> stride 32 cell (1, 1)
              "nested": [at(0, 4, 4, 0), at(1, 2, 2, 0), at(2, 1, 1, 0)],
              # 8 x 14 and 8 x 15 boxes, centres (12, 13) and (13, 15.5): both anchor 1 of cell (1, 1); 8 x 14 at
              # centre (44, 47) -> cell (5, 5)
              "shared predictor": [at(0, 1, 1, 1), at(0, 5, 5, 1)]}
  det = detector()
  for case, want in expected.items():
    boxes, labels = HAND_MADE[case]
    t = jax.tree.map(lambda x: x[0], det.assign(batch_of(boxes, labels)))
    assert np.nonzero(np.asarray(t["positive"]))[0].tolist() == sorted(want), case
  t = jax.tree.map(lambda x: x[0], det.assign(batch_of(*HAND_MADE["shared predictor"])))
  np.testing.assert_allclose(t["box"][at(0, 1, 1, 1)], [9, 8, 17, 23])  # 8 x 15 beats 8 x 14


def test_split_anchors_sorts_by_area_and_groups_finest_first():
  shuffled = ANCHORS[np.random.default_rng(0).permutation(9)]
  groups = split_anchors(shuffled)
  assert len(groups) == 3 and all(g.shape == (3, 2) for g in groups)
  for got, want in zip(groups, np.split(ANCHORS, 3)):  # the same three per scale (ties in area in any order)
    assert sorted(map(tuple, np.asarray(got).tolist())) == sorted(map(tuple, want.tolist()))
  with pytest.raises(ValueError, match="split evenly"):
    split_anchors(ANCHORS[:8])
  with pytest.raises(ValueError, match="positive"):
    split_anchors(-ANCHORS)
  with pytest.raises(ValueError, match="multiples of 32"):
    detector().assign(batch_of([[0, 0, 8, 8]], [0], height=48))


def raw_near(t, rng, boxes, lvls, num_classes=3):
  """Raw outputs whose responsible boxes sit near their objects, and where every other predictor of a cell holding a
  truth's centre, at every scale, predicts that truth's box with noise on its size (so the ignore rule both fires and
  does not)."""
  n = sum(h * w * len(a) for (h, w), _, a in lvls)
  raw = rng.normal(0, 1.0, (n, 5 + num_classes))
  pos = np.asarray(t["positive"])
  k = 0
  for (h, w), stride, anc in lvls:
    for i in range(h):
      for j in range(w):
        for aw, ah in anc:
          for x1, y1, x2, y2 in boxes:
            ox, oy = (x1 + x2) / 2 / stride - j, (y1 + y2) / 2 / stride - i
            if not pos[k] and 0 < ox < 1 and 0 < oy < 1:
              raw[k, :2] = np.log([ox / (1 - ox), oy / (1 - oy)])
              raw[k, 2:4] = np.log([(x2 - x1) / aw, (y2 - y1) / ah]) + rng.normal(0, 0.4, 2)
          k += 1
  off = np.clip(np.asarray(t["offset"]), 0.05, 0.95)
  raw[pos, :2] = np.log(off / (1 - off))[pos] + rng.normal(0, 0.3, (pos.sum(), 2))
  raw[pos, 2:4] = np.asarray(t["log_wh"])[pos] + rng.normal(0, 0.2, (pos.sum(), 2))
  return raw.astype(np.float32)


def split_raw(raw, lvls):
  out, start = [], 0
  for (h, w), _, anc in lvls:
    size = h * w * len(anc)
    out.append(jnp.asarray(raw[start:start + size]).reshape(1, h, w, len(anc), -1))
    start += size
  return tuple(out)


@pytest.mark.parametrize("case", sorted(HAND_MADE))
def test_loss_terms_and_ignore_mask_match_reference(case):
  boxes, labels = HAND_MADE[case]
  boxes, labels = boxes + [[30, 30, 60, 62]], labels + [0]  # a crowd: never positive, but it silences predictions
  crowd = np.arange(len(boxes)) == len(boxes) - 1
  det, lvls = detector(), levels()
  targets = jax.jit(det.assign)(batch_of(boxes, labels, crowd))
  n = targets["positive"].shape[1]
  raw = raw_near(jax.tree.map(lambda x: x[0], targets), np.random.default_rng(len(case)), boxes, lvls)
  loss, metrics = jax.jit(det.loss)({"raw": split_raw(raw, lvls)}, targets)
  want, ignored = loss_np(raw, np.asarray(boxes, np.float64), labels, crowd, lvls, image=IMAGE)
  for key in want:
    np.testing.assert_allclose(metrics[f"{key.rstrip('_')}_loss"], want[key], rtol=1e-4, atol=1e-5, err_msg=key)
  np.testing.assert_allclose(loss, sum(want.values()), rtol=1e-4)
  assert ignored > 0 and float(metrics["ignored_fraction"]) * n == pytest.approx(ignored, abs=1e-3)
  assert float(metrics["num_objects"]) == len(np.nonzero(np.asarray(targets["positive"]))[1])


def test_a_prediction_on_a_truth_of_another_scale_is_ignored():
  """The ignore rule reads every scale: a stride-8 box on a truth assigned at stride 32 costs nothing."""
  boxes, labels = HAND_MADE["big box"]  # 50 x 62 centred (29, 31): stride 32, cell (0, 0), anchor 1
  det, lvls = detector(), levels()
  targets = det.assign(batch_of(boxes, labels))
  n = targets["positive"].shape[1]
  raw = np.zeros((n, 8), np.float32)
  raw[:, 4] = 2.0
  other = flat_index((0, 3, 3, 2), lvls)  # stride 8, cell (3, 3), anchor 14 x 8, moved onto the truth
  raw[other, :2] = np.log([0.625 / 0.375, 0.875 / 0.125])
  raw[other, 2:4] = np.log([50 / 14, 62 / 8])

  def noobj(r):
    return det.loss({"raw": split_raw(r, lvls)}, targets)[1]["noobj_loss"]

  on_truth = noobj(raw)
  raw[other, 2:4] = np.log([20 / 14, 20 / 8])  # 20 x 20 at the same centre: IoU 0.13, counted again
  np.testing.assert_allclose(noobj(raw) - on_truth, np.log1p(np.exp(2.0)), rtol=1e-4)


def test_gradients_are_darknet_deltas():
  """d loss / d raw = sigma - target on x, y, objectness and classes (darknet passes its deltas to the raw outputs),
  (2 - w h)(t - t^) on the log sizes, 0 on ignored predictions."""
  boxes, labels = HAND_MADE["nested"]
  det, lvls = detector(), levels()
  targets = det.assign(batch_of(boxes, labels))
  t = jax.tree.map(lambda x: x[0], targets)
  raw = raw_near(t, np.random.default_rng(3), boxes, lvls)
  grads = np.asarray(jnp.concatenate([g.reshape(-1, 8) for g in jax.grad(
      lambda r: det.loss({"raw": r}, targets)[0])(split_raw(raw, lvls))]))
  pos = np.nonzero(np.asarray(t["positive"]))[0]
  for n in pos:
    scale = 2 - float(t["area"][n])
    np.testing.assert_allclose(grads[n, :2], scale * (sigmoid(raw[n, :2]) - np.asarray(t["offset"][n])), rtol=1e-4)
    np.testing.assert_allclose(grads[n, 2:4], scale * (raw[n, 2:4] - np.asarray(t["log_wh"][n])), rtol=1e-4)
    np.testing.assert_allclose(grads[n, 4], sigmoid(raw[n, 4]) - 1, rtol=1e-4)
    np.testing.assert_allclose(grads[n, 5:], sigmoid(raw[n, 5:]) - np.eye(3)[int(t["label"][n])], rtol=1e-4,
                               atol=1e-6)
  others = np.setdiff1d(np.arange(len(raw)), pos)
  assert np.all(grads[others, :4] == 0) and np.all(grads[others, 5:] == 0)
  o = grads[others, 4]
  counted = np.isclose(o, sigmoid(raw[others, 4]), rtol=1e-4)
  assert np.all(counted | (o == 0)) and counted.any()


def test_darknet53_and_neck_shapes():
  x = jnp.zeros((1, 64, 96, 3))
  full = Darknet53(width=4)
  variables = jax.eval_shape(lambda: full.init(jax.random.PRNGKey(0), x, train=False))
  feats = jax.eval_shape(lambda v: full.apply(v, x, train=False), variables)
  assert {s: f.shape for s, f in feats.items()} == {2 ** k: (1, 64 // 2 ** k, 96 // 2 ** k, 4 * 2 ** k)
                                                     for k in range(6)}
  # 52 convolutions: stem, 5 downsamplings, 2 per residual block (1 + 2 + 8 + 8 + 4) -- the paper's 53 with the FC
  convs = jax.tree_util.tree_leaves_with_path(variables["params"])
  assert len([p for p, _ in convs if p[-1].key == "kernel"]) == 52
  neck = YOLOv3Neck(width=4)
  nv = jax.eval_shape(lambda f: neck.init(jax.random.PRNGKey(0), f, train=False), feats)
  out = jax.eval_shape(lambda v, f: neck.apply(v, f, train=False), nv, feats)
  assert {s: f.shape for s, f in out.items()} == {8: (1, 8, 12, 32), 16: (1, 4, 6, 64), 32: (1, 2, 3, 128)}
  # concatenation, upsampled first: stride 16 sees 32 (reduced stride-32 path) + 64 (backbone) channels
  assert nv["params"]["s16_conv1"]["conv"]["kernel"].shape == (1, 1, 32 + 64, 32)
  assert nv["params"]["s8_conv1"]["conv"]["kernel"].shape == (1, 1, 16 + 32, 16)
  np.testing.assert_array_equal(upsample_nearest(jnp.arange(4.0).reshape(1, 2, 2, 1))[0, :, :, 0],
                                [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
  with pytest.raises(ValueError, match="five stages"):
    Darknet53(depths=(1, 2)).init(jax.random.PRNGKey(0), x, train=False)


class OutputShapesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_output_shapes_at_three_scales(self):
    det = detector()
    images = jnp.zeros((2, 64, 96, 3), jnp.uint8)
    variables = det.module.init(jax.random.PRNGKey(0), images[:1], train=False)
    outputs = self.variant(lambda v, x: det.module.apply(v, x, train=False))(variables, images)
    chex.assert_shape(outputs["raw"], [(2, 8, 12, 3, 8), (2, 4, 6, 3, 8), (2, 2, 3, 3, 8)])
    dets = self.variant(functools.partial(det.postprocess, image_shape=(64, 96)))(outputs)
    chex.assert_shape([dets.boxes, dets.scores, dets.classes, dets.valid],
                      [(2, 100, 4), (2, 100), (2, 100), (2, 100)])
    assert bool(jnp.all((dets.scores >= 0) & (dets.scores <= 1)))
    assert bool(jnp.all(dets.boxes[..., 2] <= 96)) and bool(jnp.all(dets.boxes[..., 3] <= 64))


def test_a_short_run_lowers_the_loss():
  det = detector(depths=(1, 1, 0, 0, 0))  # fewer layers to compile
  tx = optax.adam(3e-3)
  state = create_train_state(det, tx, image_shape=(IMAGE, IMAGE), seed=0)
  step = jax.jit(functools.partial(train_step, detector=det, tx=tx, schedule=lambda s: 3e-3))
  batch = tiny_batch(np.random.default_rng(0), size=IMAGE)
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert bool(metrics["finite"])
  # objectness starts at 1/2 on every predictor (the reference's initialisation): most of the first loss is there
  assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
