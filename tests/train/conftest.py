"""A tiny CenterNet and a batch of painted boxes: enough for train-step, checkpoint and parallelism tests."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdet.models import build_detector

TINY_MODEL = dict(name="centernet", depth=18, width=8, neck_features=(16, 16, 16), head_features=16)


def tiny_detector(num_classes=2, **overrides):
  options = dict(TINY_MODEL, **overrides)
  return build_detector(options.pop("name"), num_classes=num_classes, **options)


def painted_batch(seed=0, batch=8, size=64, max_boxes=4, num_classes=2):
  """Returns a batch of grey images with one or two filled rectangles each, coloured by class, and their boxes."""
  rng = np.random.default_rng(seed)
  images = np.full((batch, size, size, 3), 90, np.uint8)
  boxes = np.zeros((batch, max_boxes, 4), np.float32)
  labels = np.zeros((batch, max_boxes), np.int32)
  valid = np.zeros((batch, max_boxes), bool)
  for b in range(batch):
    for m in range(int(rng.integers(1, 3))):
      w, h = rng.integers(10, 28, 2)
      x, y = rng.integers(0, size - w), rng.integers(0, size - h)
      c = int(rng.integers(num_classes))
      images[b, y:y + h, x:x + w] = (230, 40, 40) if c == 0 else (40, 40, 230)
      boxes[b, m] = (x, y, x + w, y + h)
      labels[b, m], valid[b, m] = c, True
  return {"image": jnp.asarray(images), "boxes": jnp.asarray(boxes), "labels": jnp.asarray(labels),
          "valid": jnp.asarray(valid), "crowd": jnp.zeros((batch, max_boxes), bool)}


def optim_config(**kw):
  return ml_collections.ConfigDict(dict(optimizer="adam", learning_rate=3e-3, schedule="constant", warmup_steps=0,
                                        grad_clip_norm=0.0) | kw)
