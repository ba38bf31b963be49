"""Fast R-CNN: hierarchical sampling (2 images x 64 RoIs, 25% foreground), truncated-SVD fc layers, a short
training run on external proposals that lowers the loss, and the shared RoI path left as Faster R-CNN had it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models import build_detector
from jaxdet.models.detector import apply_detector
from jaxdet.models.heads.roi_box import TwoFCHead, truncate_fc_svd
from jaxdet.train.optim import make_optimizer
from jaxdet.train.state import create_train_state, predict_step, train_step
from tests.train.conftest import optim_config, painted_batch

TINY = dict(backbone="resnet", depth=18, width=8, head_features=32, num_proposals=48)


def with_proposals(batch, *, seed: int, num: int = 48):
  """Adds jittered copies of each image's boxes (IoU from ~0 to 1) and random boxes as its proposals."""
  rng = np.random.default_rng(seed)
  boxes, valid = np.asarray(batch["boxes"]), np.asarray(batch["valid"])
  props = np.zeros((len(boxes), num, 4), np.float32)
  for b in range(len(boxes)):
    gt = boxes[b][valid[b]]
    base = gt[rng.integers(0, len(gt), num)]
    size = np.concatenate([base[:, 2:] - base[:, :2]] * 2, -1)
    p = base + rng.normal(0, 0.3, (num, 4)) * size
    p[num // 2:, :2] = rng.uniform(0, 48, (num - num // 2, 2))
    p[num // 2:, 2:] = p[num // 2:, :2] + rng.uniform(4, 16, (num - num // 2, 2))
    p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
    props[b] = np.clip(p, 0, 64)
  return dict(batch, proposals=jnp.asarray(props), proposal_valid=jnp.ones(props.shape[:2], bool))


def test_hierarchical_sampling_two_images_of_64_rois_a_quarter_foreground():
  detector = build_detector("fast_rcnn", num_classes=2, **TINY)
  # Many proposals at IoU >= 0.5 and in [0.1, 0.5) per image: both caps bind.
  gt = np.array([[8, 8, 40, 48], [30, 30, 60, 60]], np.float32)
  rng = np.random.default_rng(0)
  base = gt[rng.integers(0, 2, 600)]
  size = np.concatenate([base[:, 2:] - base[:, :2]] * 2, -1)
  props = np.clip(base + rng.normal(0, 0.3, (600, 4)) * size, 0, 64).astype(np.float32)
  props[:, 2:] = np.maximum(props[:, 2:], props[:, :2] + 1)
  batch = {"image": jnp.zeros((2, 64, 64, 3), jnp.uint8), "boxes": jnp.asarray(np.stack([gt, gt])),
           "labels": jnp.array([[0, 1], [1, 0]]), "valid": jnp.ones((2, 2), bool), "crowd": jnp.zeros((2, 2), bool),
           "proposals": jnp.asarray(np.stack([props[:300], props[300:]])), "proposal_valid": jnp.ones((2, 300), bool)}
  variables = jax.jit(lambda k: detector.module.init(k, batch["image"], proposals=batch["proposals"],
                                                     proposal_valid=batch["proposal_valid"]))(jax.random.PRNGKey(0))
  out, _ = apply_detector(detector, variables, batch, train=True, targets=detector.assign(batch),
                          rngs={"sampling": jax.random.PRNGKey(3)}, mutable=["batch_stats"])
  t = out["roi_targets"]
  assert t["valid"].shape == (2, 64) and out["roi_logits"].shape == (2, 64, 3)
  assert out["roi_deltas"].shape == (2, 64, 2, 4)
  assert np.all(np.asarray(t["valid"]))
  fg = np.asarray(t["labels"]) > 0
  np.testing.assert_array_equal(fg.sum(axis=1), [16, 16])  # 25% of 64 per image
  iou = np.asarray(t["iou"])
  assert np.all(iou[fg] >= 0.5) and np.all((iou[~fg] >= 0.1) & (iou[~fg] < 0.5))
  loss, metrics = detector.loss(out, None)
  assert np.isfinite(float(loss)) and float(metrics["roi_foreground"]) == 32


def test_truncated_svd_layer_is_within_the_rank_error():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(60, 40)).astype(np.float32)
  params = {"fc6": {"kernel": kernel, "bias": rng.normal(size=40).astype(np.float32)},
            "fc7": {"kernel": rng.normal(size=(40, 40)).astype(np.float32), "bias": np.zeros(40, np.float32)}}
  sigma = np.linalg.svd(kernel.astype(np.float64), compute_uv=False)
  x = rng.normal(size=(16, 60))
  exact = x @ kernel + params["fc6"]["bias"]
  for rank in (5, 20, 40):
    p = truncate_fc_svd(params, (rank, 0))
    assert set(p) == {"fc6_svd_s", "fc6_svd_v", "fc7"}
    assert p["fc6_svd_s"]["kernel"].shape == (60, rank) and p["fc6_svd_v"]["kernel"].shape == (rank, 40)
    approx = x @ p["fc6_svd_s"]["kernel"] @ p["fc6_svd_v"]["kernel"] + p["fc6_svd_v"]["bias"]
    bound = np.linalg.norm(x, axis=1) * (sigma[rank] if rank < len(sigma) else 0.0)
    assert np.all(np.linalg.norm(approx - exact, axis=1) <= bound + 1e-3 * np.linalg.norm(exact, axis=1))
    # the best rank-t approximation: the Frobenius error is the tail of the singular values
    w_t = p["fc6_svd_s"]["kernel"].astype(np.float64) @ p["fc6_svd_v"]["kernel"]
    assert np.linalg.norm(kernel - w_t) == pytest.approx(np.sqrt(np.sum(sigma[rank:] ** 2)), rel=1e-3, abs=1e-3)
  # The head with full-rank factors computes what the uncompressed head does.
  pooled = jnp.asarray(rng.normal(size=(5, 2, 2, 15)), jnp.float32)
  head = TwoFCHead(3, features=40)
  v = head.init(jax.random.PRNGKey(0), pooled, train=False)
  full = truncate_fc_svd(jax.tree.map(np.asarray, v["params"]), (40, 40))
  a = head.apply(v, pooled, train=False)
  b = TwoFCHead(3, features=40, svd_ranks=(40, 40)).apply({"params": full}, pooled, train=False)
  for u, w in zip(a, b):
    np.testing.assert_allclose(u, w, rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match="rank"):
    truncate_fc_svd(params, (61, 0))


def test_short_training_on_external_proposals_lowers_the_loss():
  detector = build_detector("fast_rcnn", num_classes=2, rois_per_image=32, **TINY)
  tx, schedule = make_optimizer(optim_config(), total_steps=40)
  state = create_train_state(detector, tx, image_shape=(64, 64), seed=0)
  step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=schedule))
  history = []
  for i in range(40):
    state, metrics = step(state, with_proposals(painted_batch(seed=i % 6, batch=4), seed=i))
    history.append({k: float(v) for k, v in metrics.items()})
  mean = lambda key, part: np.mean([h[key] for h in part])  # noqa: E731
  assert mean("roi_cls_loss", history[-8:]) < 0.7 * mean("roi_cls_loss", history[:8])
  assert mean("loss", history[-8:]) < mean("loss", history[:8])
  batch = with_proposals(painted_batch(seed=0, batch=2), seed=0)
  dets = predict_step(state.variables(), {k: batch[k] for k in ("image", "proposals", "proposal_valid")},
                      detector=detector)
  assert dets.boxes.shape == (2, 100, 4) and bool(jnp.any(dets.valid))
  with pytest.raises(KeyError, match="proposals"):
    predict_step(state.variables(), {"image": batch["image"]}, detector=detector)


def test_faster_rcnn_still_builds_on_the_shared_parts():
  detector = build_detector("faster_rcnn", num_classes=2, backbone="vgg", width=4, rpn_features=8, head_features=16,
                            anchor_sizes=(16,), test_post_nms_top_n=8, test_pre_nms_top_n=50, pooler="pool")
  images = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  v = jax.jit(detector.module.init)(jax.random.PRNGKey(0), images)
  assert "backbone" in v["params"] and "roi_head" in v["params"]
  out = jax.jit(detector.module.apply)(v, images)
  assert out["roi_logits"].shape == (1, 8, 3)
