"""Selective-search proposals: computes and caches them for a config's splits, or measures their recall and speed.

  # cache every split a run needs (what train.py / eval.py would otherwise compute on first use):
  python experiments/selective_search.py --config=experiments/configs/fast_rcnn_shapes.py \\
      --splits=train,validation,test
  # recall at IoU 0.5 / 0.7 against the number of proposals, and seconds per image, of one mode on a split:
  python experiments/selective_search.py --config=... --measure --mode=quality --split=test --limit=100 \\
      --out=runs/ss_quality_test.json

The measured JSON has the keys of `experiments/proposal_recall.py` (AR@K, R50@K, R70@K for K = 100, 300, 1000),
plus more K, the proposals per image and the seconds per image (one process, median and mean).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxdet.eval.recall import proposal_recall  # noqa: E402
from jaxdet.proposals.cache import compute_proposals  # noqa: E402
from jaxdet.train import inputs  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with config.data.proposals.", lock_config=False)
SPLITS = flags.DEFINE_list("splits", ["train", "validation", "test"], "Splits to cache.")
MEASURE = flags.DEFINE_bool("measure", False, "Measure recall and speed instead of caching.")
MODE = flags.DEFINE_string("mode", None, "fast | quality | single (default: the config's).")
SPLIT = flags.DEFINE_string("split", "test", "Split to measure on.")
LIMIT = flags.DEFINE_integer("limit", None, "Measure on the first this many images.")
WORKERS = flags.DEFINE_integer("workers", 0, "Processes for --measure (0: this process, so seconds are per image).")
OUT = flags.DEFINE_string("out", None, "JSON file for --measure.")
RECALL_AT = (10, 50, 100, 300, 1000, 2000)


def measure(config) -> dict:
  """Returns recall (IoU 0.5, 0.7, AR) at each K of RECALL_AT and the seconds per image of one mode on a split."""
  p = config.data.proposals
  mode = MODE.value or p.get("mode", "fast")
  source = inputs._build_source(config.data, SPLIT.value)  # pylint: disable=protected-access  (no cache)
  start = time.time()
  arrays = compute_proposals(source, mode=mode, k_scale=p.get("k_scale", "linear"), workers=WORKERS.value,
                             limit=LIMIT.value)
  wall = time.time() - start
  ids = set(arrays["image_id"].tolist())
  gt = source.coco_ground_truth()
  gt = {**gt, "images": [i for i in gt["images"] if i["id"] in ids],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
  results = []
  offsets = np.concatenate([[0], np.cumsum(arrays["counts"])])
  for n, image_id in enumerate(arrays["image_id"].tolist()):
    boxes = arrays["boxes"][offsets[n]:offsets[n + 1]]
    for r, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
      results.append({"image_id": int(image_id), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0 - r / len(boxes)})
  recall = proposal_recall(gt, results, max_proposals=RECALL_AT)
  iou = recall["iou_thresholds"]
  summary = {"method": "selective_search", "mode": mode, "k_scale": p.get("k_scale", "linear"),
             "split": SPLIT.value, "images": len(ids), "proposals_per_image": float(np.mean(arrays["counts"])),
             "seconds_per_image_median": float(np.median(arrays["seconds"])),
             "seconds_per_image_mean": float(np.mean(arrays["seconds"])), "wall_seconds": wall,
             "workers": WORKERS.value}
  for j, k in enumerate(RECALL_AT):
    summary[f"AR@{k}"] = recall[f"AR@{k}"]
    for t in (0.5, 0.7):
      summary[f"R{int(t * 100)}@{k}"] = float(recall["recall"][np.argmin(np.abs(iou - t)), j])
  return summary


def main(argv):
  del argv
  config = CONFIG.value
  if MEASURE.value:
    summary = measure(config)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    if OUT.value:
      os.makedirs(os.path.dirname(os.path.abspath(OUT.value)), exist_ok=True)
      with open(OUT.value, "w") as f:
        json.dump(summary, f, indent=1)
    return
  for split in SPLITS.value:
    start = time.time()
    source = inputs.build_source(config, split)
    print(f"{split}: {len(source)} images with proposals in {getattr(source, 'path', '?')} "
          f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
  app.run(main)
