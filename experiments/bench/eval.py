"""Benchmark: jaxdet's COCO evaluation against pycocotools and faster-coco-eval on a COCO-sized result set.

  python experiments/bench/eval.py --num_images=2000 --num_categories=80 --dets_per_image=75

Generates ground truth (about 7 objects per image, some crowd) and noisy detections in memory, checks that the
numbers agree, and prints wall times and ratios. A peer that is not installed is skipped with a message.
"""

from __future__ import annotations

import contextlib
import copy
import io
import platform
import time

from absl import app, flags
import numpy as np

from jaxdet.eval.coco import STAT_KEYS, evaluate_coco

_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "images")
_NUM_CATEGORIES = flags.DEFINE_integer("num_categories", 80, "categories")
_DETS_PER_IMAGE = flags.DEFINE_integer("dets_per_image", 75, "detections per image (2000 x 75 = 150k)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs of jaxdet (the best is reported)")


def generate(num_images: int, num_categories: int, dets_per_image: int, seed: int = 0):
  """Returns `(ground_truth, detections)` with COCO-like statistics."""
  rng = np.random.default_rng(seed)
  images = [{"id": i + 1, "width": 640, "height": 480} for i in range(num_images)]
  categories = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(num_categories)]
  annotations, detections = [], []
  for image in images:
    n = int(rng.poisson(7)) + 1
    wh = np.exp(rng.uniform(np.log(6), np.log(400), (n, 2)))
    xy = rng.uniform(0, 1, (n, 2)) * np.maximum([640, 480] - wh, 1)
    cats = rng.integers(1, num_categories + 1, n)
    crowd = rng.uniform(size=n) < 0.01
    for k in range(n):
      annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": int(cats[k]),
                          "bbox": [float(xy[k, 0]), float(xy[k, 1]), float(wh[k, 0]), float(wh[k, 1])],
                          "area": float(wh[k, 0] * wh[k, 1] * 0.8), "iscrowd": int(crowd[k])})
    src = rng.integers(0, n, dets_per_image)
    true_positive = rng.uniform(size=dets_per_image) < 0.5
    jitter = rng.normal(0, 0.15, (dets_per_image, 4)) * np.concatenate([wh[src], wh[src]], axis=1)
    boxes = np.concatenate([xy[src], wh[src]], axis=1) + jitter
    random_wh = np.exp(rng.uniform(np.log(6), np.log(400), (dets_per_image, 2)))
    random_boxes = np.concatenate([rng.uniform(0, 400, (dets_per_image, 2)), random_wh], axis=1)
    boxes = np.where(true_positive[:, None], boxes, random_boxes)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
    det_cats = np.where(true_positive, cats[src], rng.integers(1, num_categories + 1, dets_per_image))
    scores = rng.uniform(size=dets_per_image)
    for k in range(dets_per_image):
      detections.append({"image_id": image["id"], "category_id": int(det_cats[k]),
                         "bbox": [float(v) for v in boxes[k]], "score": float(scores[k])})
  return {"images": images, "annotations": annotations, "categories": categories}, detections


def _run_peer(gt, dets, name):
  """Returns `(stats [12], seconds)` of a peer evaluator, timed from loading the results to the summary."""
  if name == "pycocotools":
    from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
    from pycocotools.cocoeval import COCOeval as Evaluator  # pylint: disable=g-import-not-at-top
  else:
    from faster_coco_eval import COCO  # pylint: disable=g-import-not-at-top
    from faster_coco_eval import COCOeval_faster as Evaluator  # pylint: disable=g-import-not-at-top
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    start = time.perf_counter()
    coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
    quiet = {} if name == "pycocotools" else {"print_function": lambda *args: None}
    ev = Evaluator(coco_gt, coco_dt, "bbox", **quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    elapsed = time.perf_counter() - start
  return np.asarray(ev.stats[:12]), elapsed


def main(argv):
  del argv
  print(f"machine: {platform.processor() or platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}")
  gt, dets = generate(_NUM_IMAGES.value, _NUM_CATEGORIES.value, _DETS_PER_IMAGE.value)
  print(f"{len(gt['images'])} images, {len(gt['categories'])} categories, {len(gt['annotations'])} ground truth, "
        f"{len(dets)} detections")
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    stats = evaluate_coco(gt, dets).stats
    times.append(time.perf_counter() - start)
  ours = min(times)
  ours_stats = np.array([stats[k] for k in STAT_KEYS])
  print(f"jaxdet.eval.coco_evaluate: {ours:.2f} s (best of {len(times)}), AP {stats['AP']:.4f}")
  for name, module in (("pycocotools", "pycocotools"), ("faster-coco-eval", "faster_coco_eval")):
    try:
      __import__(module)
    except ImportError:
      print(f"{name}: not installed, skipped")
      continue
    peer_stats, peer = _run_peer(gt, dets, name)
    diff = np.max(np.abs(peer_stats - ours_stats))
    print(f"{name}: {peer:.2f} s; jaxdet time / {name} time = {ours / peer:.3f} "
          f"({peer / ours:.1f}x faster); max |stats difference| = {diff:.1e}")


if __name__ == "__main__":
  app.run(main)
