"""Prints the YOLO dimension clusters for a config: k-means (distance 1 - IoU) over the training boxes, ready to
paste into the config's `model.anchors`; with --check, verifies the config's anchors.

  python experiments/yolo_anchors.py --config=experiments/configs/yolov2_shapes.py [--k=5] [--check]
  python experiments/yolo_anchors.py --config=experiments/configs/yolov3_shapes.py [--k=9] [--check]

Boxes are taken in network-input pixels (each image letterboxed to `config.data.image_size`, as the loader does).
YOLOv2's anchors are grid cells: the sizes are divided by `config.model.output_stride`. A config without an output
stride (YOLOv3) keeps its anchors in pixels; they are listed sorted by area, and the script also shows which ones
each output scale gets (equal groups, the smallest at the finest scale, as `split_anchors` does). `--k` defaults to
the number of anchors the config has. The clustering is `jaxdet.ops.kmeans_anchors` with a fixed key
(`--seed`), so the result is reproducible; it also prints the mean IoU of each box with its best anchor (YOLOv2's
Table 1 metric) for these anchors and for the config's, when they differ.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxdet.data.source import DetectionSource  # noqa: E402
from jaxdet.ops.kmeans import kmeans_anchors, wh_iou  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/NAME.py).")
K = flags.DEFINE_integer("k", None, "Number of anchors (default: as many as config.model.anchors has, else 5).")
SCALES = flags.DEFINE_integer("scales", 3, "Output scales the anchors are split over when they are in pixels.")
SEED = flags.DEFINE_integer("seed", 0, "Key of the k-means initialisation.")
CHECK = flags.DEFINE_bool("check", False, "Fail unless config.model.anchors equal the computed ones (to 1e-4).")


def training_box_sizes(source: DetectionSource, image_size: int) -> np.ndarray:
  """Returns `[N, 2]` float32 (w, h) of every non-crowd box of `source`, in pixels of the letterboxed network input."""
  ground_truth = source.coco_ground_truth()
  scale = {im["id"]: image_size / max(im["height"], im["width"]) for im in ground_truth["images"]}
  wh = [np.array(a["bbox"][2:]) * scale[a["image_id"]] for a in ground_truth["annotations"] if not a["iscrowd"]]
  return np.asarray(wh, np.float32).reshape(-1, 2)


def dimension_clusters(wh: np.ndarray, *, k: int, stride: int, seed: int = 0) -> tuple[np.ndarray, float]:
  """Returns `(anchors [k, 2], mean best IoU)`: k-means anchors of box sizes `wh` (pixels) in grid cells of `stride`
  pixels, rounded to 4 decimals (what a config stores), sorted by area."""
  anchors, _ = kmeans_anchors(wh / stride, k, key=jax.random.PRNGKey(seed))
  anchors = np.round(np.asarray(anchors, np.float64), 4)
  return anchors, mean_best_iou(wh / stride, anchors)


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
  """Returns the mean over boxes of the IoU with their best anchor (shapes compared at a common centre)."""
  return float(np.mean(np.max(np.asarray(wh_iou(wh, anchors)), axis=1)))


def main(argv):
  del argv
  config = CONFIG.value
  from jaxdet.train import inputs  # pylint: disable=g-import-not-at-top
  source = inputs.build_source(config, config.data.train_split)
  stride = config.model.get("output_stride", 1)  # 1: anchors in input pixels
  configured = np.asarray(config.model.get("anchors", ()), np.float64).reshape(-1, 2)
  k = K.value or len(configured) or 5
  wh = training_box_sizes(source, config.data.image_size)
  anchors, fit = dimension_clusters(wh, k=k, stride=stride, seed=SEED.value)
  unit = f"output stride {stride}" if stride != 1 else "anchors in input pixels"
  print(f"{len(wh)} training boxes of {config.data.get('shapes_config', config.data.name)}, "
        f"input {config.data.image_size}, {unit}")
  print(f"k-means anchors ({'grid cells' if stride != 1 else 'pixels'}), mean best IoU {fit:.4f}:")
  print("  " + repr(tuple(tuple(float(v) for v in a) for a in anchors)))
  if stride == 1 and k % SCALES.value == 0:
    for level, group in enumerate(np.split(anchors, SCALES.value)):
      print(f"  scale {level} (finest first): {[tuple(float(v) for v in a) for a in group]}")
  same = configured.shape == anchors.shape and np.allclose(configured, anchors, atol=1e-4)
  if configured.size and not same:  # also a different number of anchors (e.g. hand-picked ones to compare)
    print(f"config.model.anchors (mean best IoU {mean_best_iou(wh / stride, configured):.4f}) differ:")
    print("  " + repr(tuple(tuple(float(v) for v in a) for a in configured)))
    if CHECK.value:
      sys.exit(1)
  elif configured.size:
    print("config.model.anchors are these")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
