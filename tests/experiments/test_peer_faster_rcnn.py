"""The torchvision Faster R-CNN peer (C4 and FPN): jaxdet's anchors in jaxdet's order, the same number of parameters,
jaxdet's RPN anchor labels (border ignore, best anchors), RoI labels (background band) and RoI pooling, and a tiny
peer run that writes eval.py's files (slow).

Skipped where torch / torchvision are not installed (the peer environment has them):
`python -m pytest tests/experiments/test_peer_faster_rcnn.py`.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from experiments.configs import faster_rcnn_fpn_shapes, faster_rcnn_shapes  # noqa: E402
from experiments.peers import faster_rcnn  # noqa: E402
from jaxdet.models import build_detector  # noqa: E402
from jaxdet.models.detector import init_detector  # noqa: E402
from jaxdet.models.detectors.faster_rcnn import anchor_layout  # noqa: E402
from jaxdet.models.heads.rpn import rpn_targets  # noqa: E402
from jaxdet.ops.matching import match_boxes  # noqa: E402
from jaxdet.ops.roi_align import roi_align  # noqa: E402
from jaxdet.ops.roi_levels import multilevel_roi_align  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"faster_rcnn": faster_rcnn_shapes, "faster_rcnn_fpn": faster_rcnn_fpn_shapes}
GT_BOXES = np.array([[10, 10, 50, 40], [60, 64, 120, 126], [2, 90, 20, 127], [40, 30, 47, 38]], np.float32)


def peer_and_anchors(name, size=128):
  config = CONFIGS[name].get_config()
  model = faster_rcnn.build(config, 5)
  images, _ = model.transform([torch.zeros(3, size, size)])
  features = list(model.backbone(images.tensors).values())
  return config, model, model.rpn.anchor_generator(images, features)[0], [tuple(f.shape[-2:]) for f in features]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_peer_has_jaxdet_anchors_in_order(name):
  config, _, got, shapes = peer_and_anchors(name)
  m = config.model
  assert shapes == ([(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)] if m.fpn else [(8, 8)])
  want, _ = anchor_layout((128, 128), fpn=m.fpn, anchor_sizes=m.anchor_sizes, aspect_ratios=m.aspect_ratios)
  np.testing.assert_allclose(got.numpy(), np.asarray(want), atol=1e-4)  # row for row: the RPN head's order


@pytest.mark.parametrize("name,head", [("faster_rcnn", "2fc"), ("faster_rcnn_fpn", "2fc"), ("faster_rcnn", "c5")])
def test_peer_has_the_same_number_of_parameters(name, head):
  config = CONFIGS[name].get_config()
  config.model.head = head
  peer = faster_rcnn.build(config, 5)
  model = dict(config.model)
  detector = build_detector(model.pop("name"), num_classes=5, **model)
  params = jax.eval_shape(lambda: init_detector(detector, jax.random.PRNGKey(0), image_shape=(128, 128)))["params"]
  # The 2-way softmax objectness and the C-class box regressor keep jaxdet's shapes under torchvision's interfaces.
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == sum(p.numel() for p in peer.parameters())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_peer_rpn_labels_anchors_as_jaxdet(name):
  _, model, anchors, _ = peer_and_anchors(name)
  model.rpn.image_shape = (128, 128)
  (got,), _ = model.rpn.assign_targets_to_anchors([anchors], [{"boxes": torch.from_numpy(GT_BOXES)}])
  want = rpn_targets(jnp.asarray(anchors.numpy()), jnp.asarray(GT_BOXES), jnp.ones(4, bool), jnp.zeros(4, bool),
                     image_shape=(128, 128), ignore_border=True)["labels"]
  inside = model.rpn.inside(anchors).numpy()
  assert 0 < inside.sum() < len(inside)  # some anchors cross the border, and those are left out
  assert (got == 1).sum() > 0 and (got == 0).sum() > 0
  np.testing.assert_array_equal(got.numpy().astype(np.int32), np.asarray(want))


def test_peer_roi_matcher_has_jaxdet_background_band():
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 100, (300, 2)).astype(np.float32)
  proposals = np.concatenate([xy, xy + rng.uniform(4, 60, (300, 2)).astype(np.float32)], axis=1)
  _, model, _, _ = peer_and_anchors("faster_rcnn")
  _, (got,) = model.roi_heads.assign_targets_to_proposals([torch.from_numpy(proposals)], [torch.from_numpy(GT_BOXES)],
                                                          [torch.tensor([1, 2, 3, 4])])
  want = match_boxes(jnp.asarray(proposals), jnp.asarray(GT_BOXES), jnp.ones(4, bool), fg_threshold=0.5,
                     bg_threshold=0.5, bg_low_threshold=0.1).labels
  got = np.sign(got.numpy())  # class labels 1..C are foreground
  assert set(np.unique(got)) == {-1, 0, 1}
  np.testing.assert_array_equal(got, np.asarray(want))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_peer_pools_rois_as_jaxdet(name):
  config, model, _, _ = peer_and_anchors(name)
  pooler = model.roi_heads.box_roi_pool
  rng = np.random.default_rng(1)
  xy = rng.uniform(0, 100, (2, 40, 2)).astype(np.float32)
  boxes = np.concatenate([xy, xy + rng.uniform(2, 120, (2, 40, 2)).astype(np.float32)], axis=-1)
  maps = {n: torch.randn(2, 8, 128 // s, 128 // s) for n, s in zip(pooler.featmap_names, pooler.strides)}
  got = pooler(maps, list(torch.from_numpy(boxes)), [(128, 128)] * 2).permute(0, 2, 3, 1).numpy()
  nhwc = [jnp.asarray(maps[n].permute(0, 2, 3, 1).numpy()) for n in pooler.featmap_names]
  index = jnp.repeat(jnp.arange(2), 40)
  flat = jnp.asarray(boxes.reshape(-1, 4))
  if config.model.fpn:
    want = multilevel_roi_align(nhwc, flat, index, output_size=7, strides=(4, 8, 16, 32), sampling_ratio=2,
                                aligned=True, canonical_size=config.model.canonical_size)
  else:
    want = roi_align(nhwc[0], flat, index, output_size=7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_tiny_peer_run_writes_eval_files(name, tmp_path, shapes_data_dir):
  workdir = tmp_path / name
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "peers", "faster_rcnn.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', f'{name}_shapes.py')}", f"--workdir={workdir}",
         "--config.data.shapes_config=tiny", "--config.data.image_size=64", "--config.batch_size=4",
         "--config.eval_batch_size=4", "--config.total_steps=4", "--config.eval_every=2", "--config.log_every=1",
         "--config.model.score_threshold=0.0", "--threads=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(shapes_data_dir))
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  metrics = json.load(open(workdir / "eval_test.json"))
  assert metrics["split"] == "test" and metrics["step"] in (2, 4)
  for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
    assert -1.0 <= metrics[key] <= 1.0
  assert json.load(open(workdir / "results_test.json"))  # score threshold 0: detections on every image
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
  assert {"train/loss_objectness", "train/loss_classifier"} <= set(records[0])
  assert sorted(r["step"] for r in records if "val/AP" in r) == [2, 4]
  summary = json.load(open(workdir / "train_summary.json"))
  assert summary["steps"] == 4 and summary["images_per_second"] > 0
