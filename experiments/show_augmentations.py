"""Saves a few augmented training images, with their boxes drawn, as PNG: a look at what the detector is fed.

  python experiments/show_augmentations.py --source=shapes --num=8 --mosaic --out_dir=/tmp/augmentations
  python experiments/show_augmentations.py --source=generated --num=4 --nomosaic --multiscale
  python experiments/show_augmentations.py --source=shapes --pipeline=ssd --size=128   # SSD's augmentation

Runs the training loader itself (`jaxdet.data.loader.make_loader`, the same augmentations and padding), so what
is saved is exactly a batch a train step would receive. `--source=shapes` reads the embedded `shapes` set (generated
into `--data_dir` on first use); `--source=generated` makes random coloured rectangles and discs in memory.
"""

from __future__ import annotations

import os

from absl import app, flags
import numpy as np

from jaxdet.data.loader import DEFAULT_MULTISCALE_SIZES, make_loader
from jaxdet.data.source import DetectionSource, ListSource, make_example
from jaxdet.data.transforms import Augment, SSDAugment
from jaxdet.data.visualize import draw_boxes, save_png

_SOURCE = flags.DEFINE_enum("source", "generated", ["generated", "shapes"], "where the images come from")
_SHAPES_CONFIG = flags.DEFINE_string("shapes_config", "default", "shapes config: default (128 px), large, tiny")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "tfds data dir for shapes (default $JAXDET_DATA_DIR, else ~/tensorflow_datasets)")
_NUM = flags.DEFINE_integer("num", 8, "images to save")
_PIPELINE = flags.DEFINE_enum("pipeline", "centernet", ["centernet", "ssd"],
                              "training augmentation: CenterNet's (+ Mosaic, multi-scale) or SSD's")
_MOSAIC = flags.DEFINE_bool("mosaic", True, "apply Mosaic to every image (centernet pipeline)")
_MULTISCALE = flags.DEFINE_bool("multiscale", False, "draw the size from YOLOv2's 320..608 (one size per batch)")
_SIZE = flags.DEFINE_integer("size", 384, "input size when not multi-scale")
_SEED = flags.DEFINE_integer("seed", 0, "loader seed")
_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/jaxdet_augmentations", "folder for the PNGs")

GENERATED_CLASSES = ("box", "disc")


def generated_source(num: int, *, size: int = 256, seed: int = 0) -> ListSource:
  """Returns `num` random scenes of `size` px: 1..6 rectangles and discs on a smooth background, tight boxes."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size]
  examples = []
  for i in range(num):
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    image = (top + (bottom - top) * (yy[..., None] / size)).astype(np.uint8)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 7))):
      w, h = rng.integers(size // 12, size // 2, 2)
      x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
      label = int(rng.integers(2))
      inside = np.ones((h, w), bool)
      if label == 1:
        v, u = np.mgrid[0:h, 0:w]
        inside = ((u + 0.5 - w / 2) / (w / 2)) ** 2 + ((v + 0.5 - h / 2) / (h / 2)) ** 2 <= 1
      image[y1:y1 + h, x1:x1 + w][inside] = rng.integers(0, 256, 3)
      boxes.append((x1, y1, x1 + w, y1 + h))
      labels.append(label)
    examples.append(make_example(image, np.array(boxes, np.float32), labels, image_id=i + 1))
  return ListSource(examples, GENERATED_CLASSES)


def load_source() -> DetectionSource:
  if _SOURCE.value == "shapes":
    from jaxdet.data.shapes import ShapesSource  # pylint: disable=g-import-not-at-top  (needs tfds, slow import)
    return ShapesSource("train", config=_SHAPES_CONFIG.value, data_dir=_DATA_DIR.value)
  return generated_source(max(_NUM.value, 8), seed=_SEED.value)


def main(argv):
  del argv
  source = load_source()
  ssd = _PIPELINE.value == "ssd"
  loader = make_loader(source, batch_size=_NUM.value, image_size=_SIZE.value, train=True, max_boxes=64,
                       seed=_SEED.value, augment=SSDAugment() if ssd else Augment(),
                       mosaic_prob=1.0 if _MOSAIC.value and not ssd else 0.0,
                       multiscale_sizes=DEFAULT_MULTISCALE_SIZES if _MULTISCALE.value else None,
                       shard_index=0, shard_count=1)
  iterator = iter(loader)
  batch = next(iterator)
  iterator.close()
  for k in range(_NUM.value):
    valid = batch["valid"][k]
    drawn = draw_boxes(batch["image"][k], batch["boxes"][k], labels=batch["labels"][k], valid=valid,
                       class_names=source.class_names)
    path = save_png(os.path.join(_OUT_DIR.value, f"augmented_{k:02d}.png"), drawn)
    print(f"{path}: {batch['image'].shape[2]}x{batch['image'].shape[1]}, {int(valid.sum())} boxes, "
          f"image id {int(batch['image_id'][k])}" + (f", {int(batch['num_truncated'][k])} truncated"
                                                      if batch["num_truncated"][k] else ""))


if __name__ == "__main__":
  app.run(main)
