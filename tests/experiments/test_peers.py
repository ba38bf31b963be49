"""The torchvision peers: the same anchors and locations as jaxdet, the same number of parameters (the same size),
jaxdet batches as torchvision inputs, and a tiny peer run that writes eval.py's files (slow).

Skipped where torch / torchvision are not installed (they are never jaxdet requirements; the peer environment has
them): `python -m pytest tests/experiments/test_peers.py`.
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

from experiments.configs import fcos_shapes, retinanet_shapes  # noqa: E402
from experiments.peers import common, fcos, retinanet  # noqa: E402
from jaxdet.models import build_detector  # noqa: E402
from jaxdet.models.detector import init_detector  # noqa: E402
from jaxdet.models.detectors.fcos import fcos_locations  # noqa: E402
from jaxdet.models.detectors.pyramid import pyramid_shapes  # noqa: E402
from jaxdet.ops import retinanet_anchors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torch_anchors(model, size=128):
  images, _ = model.transform([torch.zeros(3, size, size)])
  features = list(model.backbone(images.tensors).values())
  return model.anchor_generator(images, features)[0].numpy(), [f.shape[-2:] for f in features]


def sorted_rows(x):
  x = np.round(np.asarray(x, np.float64), 4)
  return x[np.lexsort(x.T[::-1])]


def test_retinanet_peer_has_jaxdet_anchors():
  config = retinanet_shapes.get_config()
  m = config.model
  model = retinanet.build(config, 5)
  got, shapes = torch_anchors(model)
  levels = tuple(range(m.min_level, m.max_level + 1))
  assert [tuple(s) for s in shapes] == pyramid_shapes((128, 128), levels)
  want, _ = retinanet_anchors(pyramid_shapes((128, 128), levels), levels=levels, base_scale=m.anchor_base_scale)
  assert got.shape == want.shape
  np.testing.assert_allclose(sorted_rows(got), sorted_rows(want), atol=1e-4)


def test_fcos_peer_has_jaxdet_locations_and_ranges():
  config = fcos_shapes.get_config()
  m = config.model
  model = fcos.build(config, 5)
  got, _ = torch_anchors(model)
  levels = tuple(range(m.min_level, m.max_level + 1))
  loc = fcos_locations(pyramid_shapes((128, 128), levels), levels, m.size_boundaries)
  np.testing.assert_allclose((got[:, :2] + got[:, 2:]) / 2, loc["points"], atol=1e-5)  # same order too
  size = got[:, 2] - got[:, 0]
  np.testing.assert_allclose(np.where(np.isinf(loc["upper"]), 8 * size, loc["upper"]), 8 * size, rtol=1e-6)
  np.testing.assert_allclose(loc["lower"][loc["lower"] > 0], 4 * size[loc["lower"] > 0], rtol=1e-6)
  assert model.center_sampling_radius * size[0] == pytest.approx(m.center_sampling_radius * 4)


@pytest.mark.parametrize("name", ["retinanet", "fcos"])
def test_peer_has_the_same_number_of_parameters(name):
  config = {"retinanet": retinanet_shapes, "fcos": fcos_shapes}[name].get_config()
  peer = {"retinanet": retinanet, "fcos": fcos}[name].build(config, 5)
  model = dict(config.model)
  detector = build_detector(model.pop("name"), num_classes=5, **model)
  params = jax.eval_shape(lambda: init_detector(detector, jax.random.PRNGKey(0), image_shape=(128, 128)))["params"]
  ours = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  theirs = sum(p.numel() for p in peer.parameters())
  # FCOS: jaxdet's learned scale per level is the only extra parameter.
  assert ours - theirs == (config.model.max_level - config.model.min_level + 1 if name == "fcos" else 0)


def test_batches_become_torchvision_inputs():
  batch = {"image": np.full((2, 8, 8, 3), 255, np.uint8),
           "boxes": np.array([[[0, 0, 4, 4], [1, 1, 1, 5], [2, 2, 6, 6]], [[1, 1, 3, 3], [0, 0, 0, 0], [0, 0, 2, 2]]],
                             np.float32),
           "labels": np.array([[0, 1, 2], [3, 0, 1]], np.int32), "valid": np.array([[1, 1, 1], [1, 0, 1]], bool),
           "crowd": np.array([[0, 0, 1], [0, 0, 0]], bool)}
  images, targets = common.to_torch(batch, label_offset=1)
  assert images[0].shape == (3, 8, 8) and float(images[0].max()) == 1.0
  np.testing.assert_array_equal(targets[0]["boxes"].numpy(), [[0, 0, 4, 4]])  # empty and crowd boxes dropped
  np.testing.assert_array_equal(targets[0]["labels"].numpy(), [1])
  np.testing.assert_array_equal(targets[1]["labels"].numpy(), [4, 2])
  assert targets[1]["labels"].dtype == torch.int64


@pytest.mark.slow
@pytest.mark.parametrize("name", ["retinanet", "fcos"])
def test_a_tiny_peer_run_writes_eval_files(name, tmp_path, shapes_data_dir):
  workdir = tmp_path / name
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "peers", f"{name}.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', f'{name}_shapes.py')}", f"--workdir={workdir}",
         "--config.data.shapes_config=tiny", "--config.data.image_size=64", "--config.batch_size=4",
         "--config.eval_batch_size=4", "--config.total_steps=4", "--config.eval_every=2", "--config.log_every=1",
         "--config.model.score_threshold=0.0"]
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
  assert sorted(r["step"] for r in records if "val/AP" in r) == [2, 4]
  summary = json.load(open(workdir / "train_summary.json"))
  assert summary["steps"] == 4 and summary["images_per_second"] > 0
