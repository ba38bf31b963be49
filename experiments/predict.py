"""Runs a checkpoint on image files or on a split; writes PNGs with boxes, labels and scores, and COCO results.

  python experiments/predict.py --config=experiments/configs/centernet_shapes.py --workdir=runs/centernet_shapes \
      --images='photos/*.png' --out_dir=runs/centernet_shapes/predictions
  python experiments/predict.py ... --split=test --max_images=16
"""

from __future__ import annotations

import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from experiments import flags as jflags  # noqa: E402
from jaxdet.data.loader import make_loader  # noqa: E402
from jaxdet.data.source import ListSource, make_example  # noqa: E402
from jaxdet.data.visualize import draw_boxes, save_png  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.evaluate import make_predict_fn, predict_split  # noqa: E402
from jaxdet.train.loop import build_model, restore_variables  # noqa: E402
from jaxdet.train.parallel import make_mesh, replicate  # noqa: E402

IMAGES = flags.DEFINE_string("images", None, "Glob of image files to run on (instead of --split).")
SPLIT = flags.DEFINE_string("split", None, "Split of the config's data set to run on.")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (default: WORKDIR/predictions).")
CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best (by validation AP), or a step number.")
SCORE = flags.DEFINE_float("score_threshold", 0.3, "Draw detections scoring above this (the json keeps all).")
MAX_IMAGES = flags.DEFINE_integer("max_images", 32, "At most this many PNGs.")


def image_source(pattern: str, class_names) -> ListSource:
  """Returns the image files matching `pattern` as a source without annotations (ids 1..N in sorted order)."""
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise FileNotFoundError(f"--images={pattern!r} matches no file")
  examples = []
  for i, path in enumerate(paths, start=1):
    try:
      image = np.asarray(Image.open(path).convert("RGB"))
    except OSError as e:
      raise OSError(f"cannot read image {path}: {e}") from e
    examples.append(make_example(image, np.zeros((0, 4)), np.zeros((0,)), image_id=i))
  source = ListSource(examples, class_names)
  source.paths = paths
  return source


def main(argv):
  del argv
  config, workdir = jflags.CONFIG.value, jflags.WORKDIR.value
  if (IMAGES.value is None) == (SPLIT.value is None):
    raise app.UsageError("give exactly one of --images and --split")
  reference = inputs.build_source(config, SPLIT.value or config.data.eval_split)
  source = image_source(IMAGES.value, reference.class_names) if IMAGES.value else reference
  detector = build_model(config, reference.num_classes)
  variables, step = restore_variables(config, workdir, detector, which=CHECKPOINT.value)
  mesh = make_mesh()
  loader = make_loader(source, batch_size=config.eval_batch_size, image_size=config.data.image_size, train=False,
                       max_boxes=config.data.max_boxes, eval_resize=config.data.eval_resize, shard_index=0,
                       shard_count=1)
  out_dir = OUT_DIR.value or os.path.join(workdir, "predictions")
  os.makedirs(out_dir, exist_ok=True)
  results, drawn, position = [], 0, 0
  predict = make_predict_fn(detector, flip_test=config.flip_test)
  for meta, dets in predict_split(predict, replicate(variables, mesh), loader, mesh):
    for b in np.nonzero(meta["example_valid"])[0]:
      image_id = int(meta["image_id"][b])
      keep = dets["valid"][b]
      for box, score, cls in zip(dets["boxes"][b][keep], dets["scores"][b][keep], dets["classes"][b][keep]):
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 > x1 and y2 > y1:
          results.append({"image_id": image_id, "category_id": int(source.category_ids[int(cls)]),
                          "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                          "score": round(float(score), 5)})
      if drawn < MAX_IMAGES.value:
        shown = keep & (dets["scores"][b] > SCORE.value)
        picture = draw_boxes(source[position]["image"], dets["boxes"][b], labels=dets["classes"][b],
                             scores=dets["scores"][b], class_names=source.class_names, valid=shown)
        name = os.path.splitext(os.path.basename(source.paths[position]))[0] if IMAGES.value else str(image_id)
        save_png(os.path.join(out_dir, f"{name}.png"), picture)
        drawn += 1
      position += 1
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f)
  print(f"checkpoint step {step}: {position} images, {len(results)} detections -> {out_dir}/results.json, "
        f"{drawn} PNGs in {out_dir}")


if __name__ == "__main__":
  app.run(main)
