"""YOLOv2: anchor assignment (cell by centre, best anchor by shape IoU, over several scales as YOLOv3 needs), the
ignore rule and the loss against a NumPy transcription of darknet's region layer; decode o encode; the image
counter of the prior term; a short multi-scale run that lowers the loss with one compilation per size."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models import build_detector
from jaxdet.models.heads.yolo_loss import best_truth_iou, decode_yolo_boxes, yolo_loss, yolo_targets
from tests.models.test_yolov1 import iou_np, tiny_batch

STRIDE = 16
GRID = (4, 4)  # a 64 x 64 image
ANCHORS_PX = np.array([[8, 8], [12, 28], [28, 12], [32, 32], [56, 56]], np.float32)


def shape_iou_np(wh, anchor):
  inter = min(wh[0], anchor[0]) * min(wh[1], anchor[1])
  return inter / (wh[0] * wh[1] + anchor[0] * anchor[1] - inter)


def assign_np(boxes, valid, crowd, levels):
  """darknet's assignment, transcribed: best anchor by shape IoU over every scale's anchors (first on ties), the cell
  of that scale holding the centre (half-open), the larger box on a shared predictor (first on ties).

  levels: list of (grid (h, w), stride, anchors [A, 2] px). Returns {(level, i, j, a): m}."""
  anchors = [(lv, a, wh) for lv, (_, _, anc) in enumerate(levels) for a, wh in enumerate(anc)]
  owner = {}
  for m, (x1, y1, x2, y2) in enumerate(boxes):
    if not valid[m] or crowd[m] or not (x2 > x1 and y2 > y1):
      continue
    wh = (x2 - x1, y2 - y1)
    ious = [shape_iou_np(wh, anc) for _, _, anc in anchors]
    lv, a, _ = anchors[int(np.argmax(ious))]
    (h, w), stride, _ = levels[lv]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    key = (lv, min(int(np.floor(cy / stride)), h - 1), min(int(np.floor(cx / stride)), w - 1), a)
    area = wh[0] * wh[1]
    if key not in owner or area > owner[key][1]:
      owner[key] = (m, area)
  return {k: m for k, (m, _) in owner.items()}


def flat_index(key, levels):
  lv, i, j, a = key
  start = sum(h * w * len(anc) for (h, w), _, anc in levels[:lv])
  (h, w), _, anc = levels[lv]
  return start + (i * w + j) * len(anc) + a


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def loss_np(raw, boxes, labels, valid, crowd, levels, *, image, seen=0, thresh=0.6, coord=1.0, obj=5.0, noobj=1.0,
            cls=1.0, prior_images=12800):
  """darknet's region-layer deltas as a loss for one image (1/2 on squares, cross-entropy on softmax), float64."""
  raw = np.asarray(raw, np.float64)
  owner = assign_np(boxes, valid, crowd, levels)
  resp = {flat_index(k, levels): m for k, m in owner.items()}
  truths = [b for b, v in zip(boxes, valid) if v and b[2] > b[0] and b[3] > b[1]]
  terms = dict(coord=0.0, obj=0.0, noobj=0.0, class_=0.0, prior=0.0)
  n = 0
  for (h, w), stride, anc in levels:
    for i in range(h):
      for j in range(w):
        for a, (aw, ah) in enumerate(anc):
          t = raw[n]
          cx, cy = (sigmoid(t[0]) + j) * stride, (sigmoid(t[1]) + i) * stride
          pw, ph = aw * np.exp(t[2]), ah * np.exp(t[3])
          pred = [cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2]
          to = sigmoid(t[4])
          if n in resp:
            x1, y1, x2, y2 = boxes[resp[n]]
            tx, ty = (x1 + x2) / 2 / stride - j, (y1 + y2) / 2 / stride - i
            tw, th = np.log((x2 - x1) / aw), np.log((y2 - y1) / ah)
            scale = coord * (2 - (x2 - x1) * (y2 - y1) / (image * image))
            terms["coord"] += 0.5 * scale * ((sigmoid(t[0]) - tx) ** 2 + (sigmoid(t[1]) - ty) ** 2 +
                                             (t[2] - tw) ** 2 + (t[3] - th) ** 2)
            terms["obj"] += 0.5 * obj * (to - iou_np(pred, boxes[resp[n]])) ** 2
            logits = t[5:]
            log_z = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
            terms["class_"] += cls * (log_z - logits[labels[resp[n]]])
          else:
            best = max([iou_np(pred, b) for b in truths], default=0.0)
            if best <= thresh:
              terms["noobj"] += 0.5 * noobj * to ** 2
            if seen < prior_images:
              terms["prior"] += 0.5 * 0.01 * ((sigmoid(t[0]) - 0.5) ** 2 + (sigmoid(t[1]) - 0.5) ** 2 + t[2] ** 2 +
                                              t[3] ** 2)
          n += 1
  return terms


def levels_one():
  return [(GRID, STRIDE, ANCHORS_PX)]


def levels_two():  # a YOLOv3-like pair of scales: small anchors on the fine one
  return [((8, 8), 8, ANCHORS_PX[:2]), (GRID, STRIDE, ANCHORS_PX[2:])]


def run_targets(boxes, labels, valid, crowd, levels):
  return yolo_targets(np.asarray(boxes, np.float32), np.asarray(labels, np.int32), np.asarray(valid, bool),
                      np.asarray(crowd, bool), grid_shapes=[lv[0] for lv in levels], strides=[lv[1] for lv in levels],
                      anchors=[jnp.asarray(lv[2]) for lv in levels])


HAND_MADE = {
    # a tall box near a wide anchor's cell: the tall anchor (1) by shape, whatever the position
    "tall box": ([[20, 2, 30, 30]], [1]),
    # centre (32, 24) on the border of columns 1 and 2: column 2
    "cell border": ([[24, 16, 40, 32]], [0]),
    # two boxes in cell (0, 0): different shapes -> two anchors of the cell; the same shape -> the larger one
    "shared cell": ([[0, 0, 8, 8], [2, 0, 12, 28], [1, 1, 9, 10]], [0, 1, 2]),
    "big and small": ([[0, 0, 64, 60], [40, 40, 48, 47], [10, 30, 40, 40]], [2, 1, 0]),
}


@pytest.mark.parametrize("levels_fn", [levels_one, levels_two])
@pytest.mark.parametrize("case", sorted(HAND_MADE))
def test_assignment_matches_reference(case, levels_fn):
  levels = levels_fn()
  boxes, labels = HAND_MADE[case]
  valid, crowd = np.ones(len(boxes), bool), np.zeros(len(boxes), bool)
  t = run_targets(boxes, labels, valid, crowd, levels)
  want = {flat_index(k, levels): m for k, m in assign_np(boxes, valid, crowd, levels).items()}
  np.testing.assert_array_equal(np.nonzero(np.asarray(t["positive"]))[0], sorted(want))
  for n, m in want.items():
    np.testing.assert_allclose(t["box"][n], boxes[m])
    assert int(t["label"][n]) == labels[m]
  # decode o encode: the targets (offsets through the inverse sigmoid, log sizes) decode to the objects
  raw = jnp.concatenate([jnp.log(t["offset"] / (1 - t["offset"])), t["log_wh"]], axis=-1)
  decoded = decode_yolo_boxes(raw, grid_shapes=[lv[0] for lv in levels], strides=[lv[1] for lv in levels],
                              anchors=[jnp.asarray(lv[2]) for lv in levels])
  pos = np.asarray(t["positive"])
  np.testing.assert_allclose(np.asarray(decoded)[pos], np.asarray(t["box"])[pos], atol=1e-3)


def test_hand_made_assignments():
  levels = levels_one()
  idx = lambda i, j, a: (i * 4 + j) * 5 + a  # noqa: E731
  t = run_targets(*HAND_MADE["tall box"], [True], [False], levels)
  assert np.nonzero(np.asarray(t["positive"]))[0].tolist() == [idx(1, 1, 1)]
  t = run_targets(*HAND_MADE["cell border"], [True], [False], levels)
  # 16 x 16 matches the 12 x 28 and 28 x 12 anchors equally (IoU 0.48): the first of them
  assert np.nonzero(np.asarray(t["positive"]))[0].tolist() == [idx(1, 2, 1)]
  np.testing.assert_allclose(t["offset"][idx(1, 2, 1)], [0.0, 0.5])
  t = run_targets(*HAND_MADE["shared cell"], [True] * 3, [False] * 3, levels)
  assert np.nonzero(np.asarray(t["positive"]))[0].tolist() == [idx(0, 0, 0), idx(0, 0, 1)]
  np.testing.assert_allclose(t["box"][idx(0, 0, 0)], [1, 1, 9, 10])  # 8x9 beats 8x8 on anchor 0
  # two scales: the small anchors live on the stride-8 grid, so these boxes land there: the 8 x 9 box (centre
  # (5, 5.5)) on cell (0, 0) anchor 0, the 10 x 28 one (centre (7, 14)) on cell (1, 0) anchor 1: (1 * 8 + 0) 2 + 1
  t = run_targets(*HAND_MADE["shared cell"], [True] * 3, [False] * 3, levels_two())
  assert np.nonzero(np.asarray(t["positive"]))[0].tolist() == [0, 17]


def test_crowd_padding_and_degenerate_boxes_are_never_positive_but_crowds_count_for_the_ignore_rule():
  boxes = [[0, 0, 30, 30], [np.nan, 0, 3, 3], [10, 10, 10, 40], [40, 40, 60, 60]]
  t = run_targets(boxes, [0, 0, 0, 0], [True, True, True, False], [True, False, False, False], levels_one())
  assert not np.any(t["positive"])
  np.testing.assert_array_equal(t["truth_valid"], [True, False, False, False])
  assert all(np.all(np.isfinite(np.asarray(v, np.float32))) for v in t.values())


def test_ignore_rule_against_numpy():
  rng = np.random.default_rng(0)
  pred = rng.uniform(0, 40, (50, 2))
  pred = np.concatenate([pred, pred + rng.uniform(4, 30, (50, 2))], -1).astype(np.float32)
  truth = np.array([[5, 5, 30, 30], [20, 20, 50, 44], [0, 0, 0, 0]], np.float32)
  valid = np.array([True, True, False])
  got = np.asarray(best_truth_iou(pred, truth, valid))
  want = [max(iou_np(p, t) for t, v in zip(truth, valid) if v) for p in pred]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert float(best_truth_iou(pred[:2], truth, np.zeros(3, bool)).max()) == 0.0


def raw_near(t, rng, levels, num_classes=3):
  """Raw outputs whose boxes sit near the assigned objects (so IoUs, and the ignore rule, are exercised)."""
  n = sum(h * w * len(a) for (h, w), _, a in levels)
  raw = rng.normal(0, 1.0, (n, 5 + num_classes))
  pos = np.asarray(t["positive"])
  off = np.clip(np.asarray(t["offset"]), 0.05, 0.95)
  raw[pos, :2] = np.log(off / (1 - off))[pos] + rng.normal(0, 0.3, (pos.sum(), 2))
  raw[pos, 2:4] = np.asarray(t["log_wh"])[pos] + rng.normal(0, 0.2, (pos.sum(), 2))
  return raw.astype(np.float32)


@pytest.mark.parametrize("levels_fn", [levels_one, levels_two])
@pytest.mark.parametrize("seen", [0, 20000])
@pytest.mark.parametrize("case", sorted(HAND_MADE))
def test_loss_matches_reference(case, seen, levels_fn):
  levels = levels_fn()
  rng = np.random.default_rng(len(case) + seen)
  boxes, labels = HAND_MADE[case]
  boxes = boxes + [[30, 30, 60, 62]]  # a crowd region: never positive, but it silences predictions on it
  labels = labels + [0]
  valid, crowd = np.ones(len(boxes), bool), np.arange(len(boxes)) == len(boxes) - 1
  t = run_targets(boxes, labels, valid, crowd, levels)
  raw = raw_near(t, rng, levels)
  batched = jax.tree.map(lambda x: x[None], t)
  loss, metrics = yolo_loss(jnp.asarray(raw[None]), batched, grid_shapes=[lv[0] for lv in levels],
                            strides=[lv[1] for lv in levels], anchors=[jnp.asarray(lv[2]) for lv in levels],
                            images_seen=seen)
  want = loss_np(raw, np.asarray(boxes, np.float64), labels, valid, crowd, levels, image=64, seen=seen)
  for key in ("coord", "obj", "noobj", "class_", "prior"):
    np.testing.assert_allclose(metrics[f"{key.rstrip('_')}_loss"], want[key], rtol=1e-4, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(loss, sum(want.values()), rtol=1e-4)


def test_the_ignore_rule_silences_well_placed_predictions():
  levels = levels_one()
  boxes = [[16, 16, 48, 48]]
  t = run_targets(boxes, [0], [True], [False], levels)
  n = sum(h * w * len(a) for (h, w), _, a in levels)
  raw = np.zeros((n, 8), np.float32)
  raw[:, 4] = 2.0  # every objectness sigma = 0.88
  responsible = int(np.nonzero(np.asarray(t["positive"]))[0][0])  # anchor 3 (32 x 32) of cell (2, 2)
  # anchor 4 (56 x 56) of the same cell, moved onto the truth: centre (2 + sigma(-4)) 16 = 32.3, size 32 x 32, IoU
  # with the truth 0.96 > 0.6: ignored
  other = (2 * 4 + 2) * 5 + 4
  raw[other, :2] = -4.0
  raw[other, 2:4] = np.log(32 / 56)
  batched = jax.tree.map(lambda x: x[None], t)
  common = dict(grid_shapes=[GRID], strides=[STRIDE], anchors=[jnp.asarray(ANCHORS_PX)], images_seen=10 ** 6)
  _, metrics = yolo_loss(jnp.asarray(raw[None]), batched, **common)
  raw[other, 2:4] = np.log(48 / 56)  # 48 x 48: IoU 0.44, counted again
  _, metrics2 = yolo_loss(jnp.asarray(raw[None]), batched, **common)
  per_box = 0.5 * jax.nn.sigmoid(2.0) ** 2
  np.testing.assert_allclose(metrics2["noobj_loss"] - metrics["noobj_loss"], per_box, rtol=1e-5)
  assert responsible != other


def test_gradients_follow_darknet_deltas():
  """d loss / d raw = -delta of darknet: the IoU target and the ignore rule carry no gradient."""
  levels = levels_one()
  t = run_targets(HAND_MADE["big and small"][0], HAND_MADE["big and small"][1], [True] * 3, [False] * 3, levels)
  raw = raw_near(t, np.random.default_rng(5), levels)
  batched = jax.tree.map(lambda x: x[None], t)
  grads = np.asarray(jax.grad(lambda r: yolo_loss(r, batched, grid_shapes=[GRID], strides=[STRIDE],
                                                  anchors=[jnp.asarray(ANCHORS_PX)], images_seen=0)[0])(
                                                      jnp.asarray(raw[None])))[0]
  pos = np.asarray(t["positive"])
  n = int(np.nonzero(pos)[0][0])
  s = sigmoid(raw[n, 4].astype(np.float64))
  decoded = np.asarray(decode_yolo_boxes(raw, grid_shapes=[GRID], strides=[STRIDE], anchors=[ANCHORS_PX]))
  iou = iou_np(decoded[n], np.asarray(t["box"][n]))
  np.testing.assert_allclose(grads[n, 4], 5.0 * (s - iou) * s * (1 - s), rtol=1e-4)
  p = np.exp(raw[n, 5:] - raw[n, 5:].max())
  p /= p.sum()
  np.testing.assert_allclose(grads[n, 5:], p - np.eye(3)[int(t["label"][n])], rtol=1e-4, atol=1e-6)
  scale = 2 - float(t["area"][n])
  np.testing.assert_allclose(grads[n, 2:4], scale * (raw[n, 2:4] - np.asarray(t["log_wh"][n])), rtol=1e-4)


def test_images_seen_counts_training_images_and_ends_the_prior_term():
  detector = build_detector("yolov2", num_classes=3, width=2, output_stride=16, anchors=ANCHORS_PX / 16,
                            prior_images=6)
  batch = tiny_batch(np.random.default_rng(0), b=4)
  variables = jax.jit(lambda k: detector.module.init(k, batch["image"], train=False))(jax.random.PRNGKey(0))
  apply = jax.jit(lambda v, train: detector.module.apply(v, batch["image"], train=train, mutable=["batch_stats"]),
                  static_argnums=1)
  targets = detector.assign(batch)
  loss = jax.jit(detector.loss)
  priors = []
  for _ in range(3):
    outputs, updates = apply(variables, True)
    priors.append(float(loss(outputs, targets)[1]["prior_loss"]))
    variables = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
  assert int(variables["batch_stats"]["images_seen"]) == 12
  assert priors[0] > 0 and priors[1] > 0 and priors[2] == 0.0  # 0 and 4 images seen < 6 <= 8
  outputs, updates = apply(variables, False)
  assert int(updates["batch_stats"]["images_seen"]) == 12  # inference does not count


def test_ablation_switches_remove_their_layers():
  images = jnp.zeros((1, 64, 64, 3), jnp.uint8)
  def variables(**kw):
    detector = build_detector("yolov2", num_classes=3, width=4, output_stride=16, anchors=ANCHORS_PX / 16, **kw)
    return jax.eval_shape(lambda: detector.module.init(jax.random.PRNGKey(0), images, train=False))
  full, plain = variables(), variables(passthrough=False, batch_norm=False)
  assert "passthrough" in full["params"] and "passthrough" not in plain["params"]
  assert full["params"]["passthrough"]["reduce"]["conv"]["kernel"].shape == (1, 1, 32, 8)  # stride-8 map, 2 x width
  assert full["params"]["detect3"]["conv"]["kernel"].shape[2] == 4 * 8 + 128  # reorganised fine + coarse
  assert list(plain["batch_stats"]) == ["images_seen"] and "bn" not in plain["params"]["detect1"]
  assert len([k for k in full["params"]["backbone"]["stack"] if k.startswith("conv")]) == 18


def test_multiscale_run_lowers_the_loss_with_one_compilation_per_size():
  import optax  # pylint: disable=g-import-not-at-top
  from jaxdet.train.state import create_train_state, train_step  # pylint: disable=g-import-not-at-top
  detector = build_detector("yolov2", num_classes=3, width=4, output_stride=16, anchors=ANCHORS_PX / 16)
  tx = optax.adam(3e-3)
  state = create_train_state(detector, tx, image_shape=(64, 64), seed=0)
  traced = []  # image shapes the step was traced (and so compiled) for; a Python side effect runs at trace time only

  def counted_step(state, batch):
    traced.append(batch["image"].shape[1:3])
    return train_step(state, batch, detector=detector, tx=tx, schedule=lambda s: 3e-3)

  step = jax.jit(counted_step)
  batches = {size: tiny_batch(np.random.default_rng(size), size=size) for size in (48, 64)}
  losses = {48: [], 64: []}
  for k in range(24):
    size = (48, 64)[(k // 3) % 2]  # a new size every 3 steps
    state, metrics = step(state, batches[size])
    losses[size].append(float(metrics["loss"]))
  # One trace per size. (Not `step._cache_size()`: the C++ dispatch cache reads 0 after some earlier tests in a
  # full run, though nothing recompiles.)
  assert sorted(traced) == [(48, 48), (64, 64)]
  assert bool(metrics["finite"])
  for size in (48, 64):
    assert np.mean(losses[size][-3:]) < 0.6 * np.mean(losses[size][:3]), (size, losses[size])
  outputs = detector.module.apply(state.variables(), batches[64]["image"], train=False)
  assert outputs["raw"].shape == (4, 4, 4, 5, 8)
  dets = jax.jit(detector.postprocess, static_argnums=1)(outputs, (64, 64))
  assert dets.boxes.shape == (4, 100, 4) and bool(jnp.all(dets.scores <= 1.0))
