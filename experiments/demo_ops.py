"""A tour of jaxdet's box maths on a generated scene: anchors, matching, sampling, coding, k-means anchors.

Prints what each step produces, so a fresh install can be checked end to end in seconds:

  python experiments/demo_ops.py --num_boxes=12 --seed=0
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet import ops

_NUM_BOXES = flags.DEFINE_integer("num_boxes", 12, "ground-truth boxes in the generated scene")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the generated scene and of the sampler")
_IMAGE = (600, 800)  # (height, width): a 38 x 50 stride-16 feature map, as in the Faster R-CNN example.


def _scene(rng: np.random.Generator, n: int) -> np.ndarray:
  """`[n, 4]` xyxy boxes of random sizes 16..400 px inside the image."""
  h, w = _IMAGE
  size = np.exp(rng.uniform(np.log(16), np.log(400), (n, 1))) * np.exp(rng.uniform(-0.5, 0.5, (n, 2)))
  size = np.minimum(size, [w - 1, h - 1])
  x1 = rng.uniform(0, w - size[:, 0])
  y1 = rng.uniform(0, h - size[:, 1])
  return np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], axis=1).astype(np.float32)


@jax.jit
def _rpn_targets(anchors, gt, valid, key):
  match = ops.match_rpn(anchors, gt, valid)
  chosen = ops.sample_rpn(match.labels, key=key)
  deltas = ops.encode_boxes(gt[match.matched_gt], anchors, weights=(1.0, 1.0, 1.0, 1.0))
  return match, chosen, deltas


def main(argv):
  del argv
  rng = np.random.default_rng(_SEED.value)
  max_boxes = max(_NUM_BOXES.value, 1)
  gt = np.zeros((max_boxes, 4), np.float32)
  gt[:_NUM_BOXES.value] = _scene(rng, _NUM_BOXES.value)
  valid = np.arange(max_boxes) < _NUM_BOXES.value
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; scene {_IMAGE[1]}x{_IMAGE[0]} px with "
        f"{_NUM_BOXES.value} ground-truth boxes")

  feature_shape = (-(-_IMAGE[0] // 16), -(-_IMAGE[1] // 16))  # ceil: a padded stride-16 backbone
  anchors = ops.faster_rcnn_anchors(feature_shape, stride=16)
  print(f"anchors: {anchors.shape[0]:,} on a {feature_shape[0]}x{feature_shape[1]} stride-16 map (9 per cell)")

  start = time.perf_counter()
  match, chosen, deltas = jax.block_until_ready(_rpn_targets(anchors, gt, valid, jax.random.key(_SEED.value)))
  elapsed = time.perf_counter() - start
  labels = np.asarray(match.labels)
  print(f"RPN matching (fg >= 0.7, bg < 0.3, best anchor forced): {np.sum(labels == 1)} fg, "
        f"{np.sum(labels == 0):,} bg, {np.sum(labels == -1):,} ignored  [{elapsed * 1e3:.0f} ms incl. compile]")
  chosen = np.asarray(chosen)
  print(f"balanced sample: {chosen.sum()} anchors, {np.sum(chosen & (labels == 1))} of them foreground")

  fg = labels == 1
  decoded = ops.decode_boxes(deltas[fg], anchors[fg], weights=(1.0, 1.0, 1.0, 1.0))
  err = float(jnp.max(jnp.abs(decoded - gt[np.asarray(match.matched_gt)[fg]]))) if fg.any() else 0.0
  print(f"encode -> decode round trip on the foreground anchors: max error {err:.2e} px")

  iou = np.asarray(ops.pairwise_iou(gt[valid], gt[valid]))
  off_diagonal = iou[~np.eye(len(iou), dtype=bool)]
  print(f"ground-truth overlaps: max IoU between two objects {off_diagonal.max(initial=0.0):.3f}")

  wh = gt[valid, 2:] - gt[valid, :2]
  k = min(5, int(valid.sum()))
  if k:
    centres, fit = ops.kmeans_anchors(wh, k, key=jax.random.key(_SEED.value))
    shapes = ", ".join(f"{w:.0f}x{h:.0f}" for w, h in np.asarray(centres))
    print(f"k-means anchors (k={k}, 1 - IoU distance): {shapes}; mean best IoU {float(fit):.3f}")


if __name__ == "__main__":
  app.run(main)
