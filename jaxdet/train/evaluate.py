"""Evaluation of a detector on a split: batched prediction on every device, COCO metrics, results and curves."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import numpy as np

from jaxdet import xla_cpu
from jaxdet.data.loader import Loader
from jaxdet.data.source import DetectionSource, to_original_frame
from jaxdet.eval import CocoEvaluator, plot_pr_curves
from jaxdet.models.detector import Detector
from jaxdet.train.parallel import gather_host_values, shard_batch, to_host
from jaxdet.train.progress import Progress
from jaxdet.train.state import predict_step


def make_predict_fn(detector: Detector, *, flip_test: bool = False):
  """Returns `predict(variables, batch) -> Detections`, jitted (compiled once per image shape).

  `predict.fields` names the batch fields it reads: `image` and the detector's `inputs`.
  """
  jitted = xla_cpu.jit(functools.partial(predict_step, detector=detector, flip_test=flip_test))
  fields = ("image", *detector.inputs)

  def predict(variables, batch):
    return jitted(variables, {k: batch[k] for k in fields})

  predict.fields = fields
  return predict


def predict_split(predict_fn, variables: Any, loader: Loader, mesh, *, show_progress: bool = True):
  """Yields, per batch, `(host batch fields, detections)` with boxes mapped to stored-image pixels.

  Each item is `(meta, dets)`: `meta` holds `image_id [B]`, `orig_size [B, 2]`, `example_valid [B]` of the
  global batch; `dets` holds NumPy `boxes [B, K, 4]` (xyxy, stored-image pixels, clipped), `scores`, `classes`,
  and `valid` (False on padded examples too).
  """
  progress = Progress(loader.num_batches or 0, desc="eval", enabled=show_progress and jax.process_index() == 0)
  for i, batch in enumerate(loader):
    dets = to_host(predict_fn(variables, shard_batch({k: batch[k] for k in predict_fn.fields}, mesh)))
    meta = gather_host_values({k: batch[k] for k in ("image_id", "orig_size", "frame", "example_valid")})
    boxes = to_original_frame(np.asarray(dets.boxes, np.float32), meta["frame"])
    h = meta["orig_size"][:, 0, None].astype(np.float32)
    w = meta["orig_size"][:, 1, None].astype(np.float32)
    boxes = np.stack([np.clip(boxes[..., 0], 0, w), np.clip(boxes[..., 1], 0, h),
                      np.clip(boxes[..., 2], 0, w), np.clip(boxes[..., 3], 0, h)], axis=-1)
    valid = np.asarray(dets.valid) & meta["example_valid"][:, None]
    progress.update(i + 1, images=len(meta["image_id"]))
    yield meta, {"boxes": boxes, "scores": np.asarray(dets.scores), "classes": np.asarray(dets.classes),
                 "valid": valid}
  progress.close()


def evaluate_split(predict_fn, variables: Any, source: DetectionSource, loader: Loader, mesh, *,
                   ground_truth: Any = None, show_progress: bool = True, pictures=None) -> CocoEvaluator:
  """Returns a `CocoEvaluator` holding the detections of every example of `source` (see `predict_split`).

  `ground_truth`: `source.coco_ground_truth()`, when the caller already has it (it can cost a pass over the data).
  `pictures`: a `jaxdet.train.pictures.PictureSampler`, reset and then given this pass's detections of its images.
  """
  ground_truth = source.coco_ground_truth() if ground_truth is None else ground_truth
  evaluator = CocoEvaluator(ground_truth, source.category_ids)
  if pictures is not None:
    pictures.reset()
  for meta, dets in predict_split(predict_fn, variables, loader, mesh, show_progress=show_progress):
    evaluator.add(meta["image_id"], dets["boxes"], dets["scores"], dets["classes"], dets["valid"])
    if pictures is not None:
      pictures.add(meta, dets)
  return evaluator


def write_evaluation(evaluator: CocoEvaluator, directory: str, split: str, *, step: int) -> dict[str, float]:
  """Returns the metrics, after writing `eval_<split>.json`, `results_<split>.json` and `pr_<split>.png`.

  `eval_<split>.json` holds the 12 COCO numbers, per-class AP and the step; `results_<split>.json` the COCO results
  that pycocotools reads. Call on process 0.
  """
  metrics = evaluator.evaluate()
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f"eval_{split}.json"), "w") as f:
    json.dump({"step": int(step), "split": split, **metrics, "num_skipped": evaluator.num_skipped}, f, indent=1)
  evaluator.write_results(os.path.join(directory, f"results_{split}.json"))
  plot_pr_curves(evaluator.evaluate_full(), os.path.join(directory, f"pr_{split}.png"))
  return metrics
