"""The torchvision SSD peer: jaxdet's priors in jaxdet's order, the same maps and number of parameters, the same
MultiBox loss on the same outputs, and a tiny peer run that writes eval.py's files (slow).

Skipped where torch / torchvision are not installed (the peer environment has them):
`python -m pytest tests/experiments/test_peer_ssd.py`.
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

from experiments.configs import ssd_shapes  # noqa: E402
from experiments.peers import common, ssd  # noqa: E402
from jaxdet.models import build_detector  # noqa: E402
from jaxdet.models.detector import init_detector  # noqa: E402
from jaxdet.models.detectors.ssd import RATIOS_128, ssd_loss, ssd_prior_boxes, ssd_targets  # noqa: E402
from jaxdet.models.necks.ssd import EXTRAS_128  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def jaxdet_ssd(config):
  model = dict(config.model)
  return build_detector(model.pop("name"), num_classes=5, **model)


def test_peer_has_jaxdet_priors_in_order_and_the_same_maps():
  config = ssd_shapes.get_config()
  model = ssd.build(config, 5).eval()
  images, _ = model.transform([torch.zeros(3, 128, 128)])
  features = list(model.backbone(images.tensors).values())
  assert [tuple(f.shape[-2:]) for f in features] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
  got = model.anchor_generator(images, features)[0].numpy()
  want = ssd_prior_boxes(128, extras=EXTRAS_128, aspect_ratios=RATIOS_128, s_min=config.model.s_min,
                         s_max=config.model.s_max)
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_peer_has_the_same_number_of_parameters():
  config = ssd_shapes.get_config()
  peer = ssd.build(config, 5)
  params = jax.eval_shape(lambda: init_detector(jaxdet_ssd(config), jax.random.PRNGKey(0),
                                                image_shape=(128, 128)))["params"]
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == sum(p.numel() for p in peer.parameters())


def test_peer_loss_equals_jaxdet_multibox_loss_on_the_same_outputs():
  config = ssd_shapes.get_config()
  config.model.width = 4
  model = ssd.build(config, 5).train()
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8),
           "boxes": np.array([[[10, 10, 50, 40], [60, 64, 120, 126], [0, 0, 0, 0]],
                              [[30, 5, 70, 90], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32),
           "labels": np.array([[0, 3, 0], [4, 0, 0]], np.int32), "valid": np.array([[1, 1, 0], [1, 0, 0]], bool),
           "crowd": np.zeros((2, 3), bool)}
  images, targets = common.to_torch(batch, label_offset=1)
  captured = {}
  original = model.head.forward
  model.head.forward = lambda x: captured.setdefault("outputs", original(x))
  losses = model(images, targets)
  outputs = {"logits": jnp.asarray(captured["outputs"]["cls_logits"].detach().numpy()),
             "deltas": jnp.asarray(captured["outputs"]["bbox_regression"].detach().numpy())}
  priors = jnp.asarray(ssd_prior_boxes(128, extras=EXTRAS_128, aspect_ratios=RATIOS_128, s_min=0.1, s_max=0.9))
  ours = jax.vmap(lambda b, l, v, c: ssd_targets(priors, b, l, v, c))(batch["boxes"], batch["labels"],
                                                                       batch["valid"], batch["crowd"])
  loss, metrics = ssd_loss(outputs, ours)
  np.testing.assert_allclose(float(metrics["box_loss"]), float(losses["bbox_regression"].detach()), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["conf_loss"]), float(losses["classification"].detach()), rtol=1e-4)


@pytest.mark.slow
def test_a_tiny_peer_run_writes_eval_files(tmp_path, shapes_data_dir):
  workdir = tmp_path / "ssd"
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "peers", "ssd.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', 'ssd_shapes.py')}", f"--workdir={workdir}",
         "--config.data.shapes_config=tiny", "--config.data.image_size=64", "--config.model.width=4",
         "--config.batch_size=4", "--config.eval_batch_size=4", "--config.total_steps=4", "--config.eval_every=2",
         "--config.log_every=1", "--config.model.score_threshold=0.0"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(shapes_data_dir))
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  metrics = json.load(open(workdir / "eval_test.json"))
  assert metrics["split"] == "test" and metrics["step"] in (2, 4)
  assert json.load(open(workdir / "results_test.json"))
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
  summary = json.load(open(workdir / "train_summary.json"))
  assert summary["steps"] == 4 and summary["images_per_second"] > 0
