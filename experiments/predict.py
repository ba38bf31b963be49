"""Runs a checkpoint on image files or on a split; writes PNGs with boxes, labels and scores, and COCO results.

  python experiments/predict.py --config=experiments/configs/centernet_shapes.py --workdir=runs/centernet_shapes \
      --images='photos/*.png' --out_dir=runs/centernet_shapes/predictions
  python experiments/predict.py ... --split=test --max_images=16

The results json (`OUT_DIR/results.json`, every detection, COCO ids of the training data) is what pycocotools'
`loadRes` reads. The PNGs (`OUT_DIR/<image id or file name>.png`, at most --max_images) show the detections scoring
above --score_threshold on the image enlarged until its short side is --min_side pixels (or by --display_scale),
under a strip with the image id, the threshold and a legend; with --split they also show the ground truth
(dashed), false positives (crossed out in red) and missed objects (red dashes), matched at IoU 0.5 as COCO does.
The console shows the progress bar, the table, warnings and errors; INFO records go to WORKDIR/log.txt
(`--log_level=info` shows them too).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from experiments import flags as jflags  # noqa: E402
from jaxdet.data.source import ListSource, make_example  # noqa: E402
from jaxdet.data.visualize import save_png  # noqa: E402
from jaxdet.eval import CocoEvaluator  # noqa: E402
from jaxdet.eval.pictures import detection_picture  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.evaluate import make_predict_fn, predict_split  # noqa: E402
from jaxdet.train.loop import build_model, restore_variables  # noqa: E402
from jaxdet.train.parallel import make_mesh, replicate  # noqa: E402
from jaxdet.train.pictures import PictureSampler  # noqa: E402

IMAGES = flags.DEFINE_string("images", None, "Glob of image files to run on (instead of --split).")
SPLIT = flags.DEFINE_string("split", None, "Split of the config's data set to run on.")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (default: WORKDIR/predictions).")
CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best (by validation AP), or a step number.")
SCORE = flags.DEFINE_float("score_threshold", 0.3, "Draw detections scoring above this (the json keeps all).")
MAX_IMAGES = flags.DEFINE_integer("max_images", 32, "At most this many PNGs (the first images).")
MIN_SIDE = flags.DEFINE_integer("min_side", 512, "Draw images enlarged until their short side has this many pixels.")
DISPLAY_SCALE = flags.DEFINE_float("display_scale", None, "Draw images at this scale instead (overrides --min_side).")


class ImageFiles(ListSource):
  """The image files matching a glob, without annotations: image ids 1..N in sorted path order."""

  def __init__(self, pattern: str, class_names, category_ids):
    self.paths = sorted(glob.glob(pattern))
    if not self.paths:
      raise FileNotFoundError(f"--images={pattern!r} matches no file")
    examples = []
    for i, path in enumerate(self.paths, start=1):
      try:
        image = np.asarray(Image.open(path).convert("RGB"))
      except OSError as e:
        raise OSError(f"cannot read image {path}: {e}") from e
      examples.append(make_example(image, np.zeros((0, 4)), np.zeros((0,)), image_id=i))
    super().__init__(examples, class_names)
    self._category_ids = list(category_ids)

  @property
  def category_ids(self):
    return self._category_ids


def main(argv):
  del argv
  jflags.initialize()
  config, workdir = jflags.CONFIG.value, jflags.WORKDIR.value
  if (IMAGES.value is None) == (SPLIT.value is None):
    raise app.UsageError("give exactly one of --images and --split")
  reference = inputs.build_source(config, SPLIT.value or config.data.eval_split)
  if IMAGES.value:
    source = ImageFiles(IMAGES.value, reference.class_names, reference.category_ids)
    names = [os.path.splitext(os.path.basename(p))[0] for p in source.paths]
  else:
    source, names = reference, None
  detector = build_model(config, reference.num_classes)
  variables, step = restore_variables(config, workdir, detector, which=CHECKPOINT.value)
  mesh = make_mesh()
  out_dir = OUT_DIR.value or os.path.join(workdir, "predictions")
  os.makedirs(out_dir, exist_ok=True)
  # The evaluator turns detections into COCO results (and scores them against the split's ground truth).
  evaluator = CocoEvaluator(source.coco_ground_truth(), source.category_ids)
  predict = make_predict_fn(detector, flip_test=config.flip_test)
  pictures = PictureSampler(source, MAX_IMAGES.value, score_threshold=SCORE.value)
  count = 0
  for meta, dets in predict_split(predict, replicate(variables, mesh), inputs.eval_loader(config, source), mesh):
    evaluator.add(meta["image_id"], dets["boxes"], dets["scores"], dets["classes"], dets["valid"])
    pictures.add(meta, dets)
    count += int(meta["example_valid"].sum())
  drawn = 0
  for item in pictures.items():
    name = names[item.image_id - 1] if names else str(item.image_id)  # ImageFiles numbers its files from 1
    if IMAGES.value:  # image files have no annotations: nothing is a false positive or a miss
      item = dataclasses.replace(item, gt_boxes=None, gt_labels=None, gt_crowd=None, name=name)
    picture = detection_picture(item, class_names=source.class_names, score_threshold=SCORE.value,
                                min_side=MIN_SIDE.value, scale=DISPLAY_SCALE.value, title=f"checkpoint step {step}")
    save_png(os.path.join(out_dir, f"{name}.png"), picture)
    drawn += 1
  evaluator.write_results(os.path.join(out_dir, "results.json"))
  print(f"checkpoint step {step}: {count} images, {len(evaluator.results())} detections -> "
        f"{out_dir}/results.json, {drawn} PNGs in {out_dir}")
  if not IMAGES.value:
    print(evaluator.summary())


if __name__ == "__main__":
  app.run(main)
