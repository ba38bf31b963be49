"""The training loop with augmentation on the device and batches prefetched to it: it trains, refuses what it
cannot do by name, and a run stopped and resumed reaches the losses of an unbroken one (the checkpoint holds the
consumed loader position, not the prefetcher's, and each example's augmentation is a function of its position)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from jaxdet.train import inputs
from jaxdet.train.loop import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(data_dir, total_steps, **data):
  spec = importlib.util.spec_from_file_location("centernet_shapes",
                                                os.path.join(ROOT, "experiments", "configs", "centernet_shapes.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.data.shapes_config, c.data.data_dir, c.data.image_size, c.data.max_boxes = "tiny", str(data_dir), 64, 8
  c.data.device_augment = True
  c.data.augment.scale_range = (0.7, 1.2)  # the whole device pipeline: flip, scale + crop, colour
  c.data.augment.brightness = c.data.augment.contrast = c.data.augment.saturation = 0.3
  c.data.augment.lighting = 0.1
  c.data.update(data)
  c.prefetch_to_device = 2
  c.model.width, c.model.neck_features, c.model.head_features = 8, (16, 16, 16), 16
  c.total_steps, c.batch_size, c.eval_batch_size = total_steps, 8, 8
  c.log_every, c.eval_every, c.checkpoint_every = 1, 100, 3
  c.num_pictures = 0
  c.optim.schedule, c.optim.warmup_steps, c.optim.learning_rate = "constant", 0, 3e-3
  return c


def losses(workdir):
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    record = json.loads(line)
    if "train/loss" in record:
      out[record["step"]] = record["train/loss"]
  return out


@pytest.mark.slow
def test_a_resumed_run_with_device_augmentation_and_prefetch_matches_an_unbroken_one(shapes_data_dir, tmp_path):
  train_and_evaluate(tiny_config(shapes_data_dir, 6), str(tmp_path / "unbroken"))
  stopped = tmp_path / "stopped"
  train_and_evaluate(tiny_config(shapes_data_dir, 3), str(stopped))  # "stops" after the step-3 checkpoint
  train_and_evaluate(tiny_config(shapes_data_dir, 6), str(stopped))  # resumes at 3 with 2 batches prefetched
  want, got = losses(tmp_path / "unbroken"), losses(stopped)
  assert sorted(got) == sorted(want) == list(range(1, 7))
  assert np.all(np.isfinite(list(want.values())))
  np.testing.assert_allclose([got[s] for s in range(1, 7)], [want[s] for s in range(1, 7)], rtol=1e-5)


@pytest.mark.parametrize("key, value, match", [
    ("mosaic_prob", 0.5, "mosaic_prob"),
    ("multiscale_sizes", (64, 96), "multiscale_sizes"),
    ("pipeline", "ssd", "SSDAugment"),
    ("augment.hue", 0.1, "hue"),
])
def test_device_augmentation_refuses_host_only_options_by_name(shapes_data_dir, key, value, match):
  config = tiny_config(shapes_data_dir, 1)
  if key == "pipeline":
    config.data.augment = {}  # SSD's options have other names
  if key.startswith("augment."):
    config.data.augment[key.split(".")[1]] = value
  else:
    config.data[key] = value
  with pytest.raises(ValueError, match=match):
    inputs.device_augment(config)
  source = inputs.build_source(config, "train")
  with pytest.raises(ValueError, match=match):
    inputs.train_loader(config, source)
