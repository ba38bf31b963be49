"""Benchmark: where Faster R-CNN + FPN's test-time step spends its time, stage by stage, each stage jitted apart.

  taskset -c 0 python experiments/bench/faster_rcnn_stages.py --config=experiments/configs/faster_rcnn_fpn_shapes.py \
      --workdir=runs/faster_rcnn_fpn_shapes/seed0 --sizes=128,512 --batch_size=8

Stages (the pipeline of `FasterRCNN.__call__` in inference, then `decode_detections`): features (backbone, FPN and
the RPN head), proposals (`generate_proposals` per image: per-level top-k, decode, NMS by level, top-K), pooling
(multi-level RoI Align), box head, detections (softmax, per-class decoding, class-aware NMS, top 100); and the
whole jitted predict step for comparison. Each stage's inputs are computed once beforehand; calls of all stages
are interleaved round by round so that a changing machine load hits every stage alike. Reported per stage: the
process's CPU time (all its threads; on one core it is what the stage costs, even while other processes take
turns on that core) and the wall time, best and median of the rounds. Trained weights (the best checkpoint of
`--workdir`) make the post-processing do a trained detector's work.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxdet.models.backbones.resnet import ResNet  # noqa: E402
from jaxdet.models.detectors.faster_rcnn import FPN_STRIDES, anchor_layout  # noqa: E402
from jaxdet.models.heads.roi_box import TwoFCHead, decode_detections  # noqa: E402
from jaxdet.models.heads.rpn import RPNHead, objectness_score  # noqa: E402
from jaxdet.models.necks.fpn import FPN  # noqa: E402
from jaxdet.ops.images import normalize_image  # noqa: E402
from jaxdet.ops.proposals import generate_proposals  # noqa: E402
from jaxdet.ops.roi_levels import multilevel_roi_align  # noqa: E402
from experiments.bench.sized import sized_batch_and_variables  # noqa: E402
from jaxdet.train.evaluate import make_predict_fn  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", None, "jaxdet config file (a Faster R-CNN + FPN config).")
WORKDIR = flags.DEFINE_string("workdir", None, "Run whose best checkpoint is measured (default: fresh weights).")
SIZES = flags.DEFINE_list("sizes", ["128", "512"], "Input sizes (square) to measure.")
BATCH = flags.DEFINE_integer("batch_size", 8, "Images per call.")
ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (each calls every stage once).")


def stages(detector, image_shape):
  """Returns {name: (fn, argument builder)} for the FPN Faster R-CNN's inference stages."""
  m = detector.module
  if not m.fpn or m.head != "2fc":
    raise ValueError("this profile follows the FPN + 2fc Faster R-CNN")
  anchors, level_sizes = anchor_layout(image_shape, fpn=True, anchor_sizes=m.anchor_sizes,
                                       aspect_ratios=m.aspect_ratios)

  def features(v, images):
    x = normalize_image(images, m.pixel_mean, m.pixel_std)
    c = ResNet(depth=m.depth, width=m.width, num_stages=4).apply(
        {"params": v["params"]["backbone"], "batch_stats": v["batch_stats"]["backbone"]}, x, train=False)
    maps = FPN(features=m.fpn_features, min_level=2, max_level=6, extra="maxpool").apply(
        {"params": v["params"]["neck"]}, c)
    obj, deltas = RPNHead(num_anchors=len(m.aspect_ratios), features=m.rpn_features, softmax=m.rpn_softmax).apply(
        {"params": v["params"]["rpn"]}, maps)
    return maps, obj, deltas

  def proposals(obj, deltas):
    return jax.vmap(lambda o, d: generate_proposals(
        anchors, o, d, image_shape=image_shape, level_sizes=level_sizes, pre_nms_top_n=m.test_pre_nms_top_n,
        post_nms_top_n=m.test_post_nms_top_n, nms_threshold=m.rpn_nms_threshold, min_size=m.rpn_min_size))(
        objectness_score(obj), deltas)

  def pool(maps, rois, valid):
    b, s, _ = rois.shape
    index = jnp.where(valid, jnp.arange(b, dtype=jnp.int32)[:, None], -1).reshape(-1)
    return multilevel_roi_align(maps[:4], rois.reshape(b * s, 4), index, output_size=m.pool_size,
                                strides=FPN_STRIDES[:4], sampling_ratio=m.sampling_ratio, aligned=True,
                                canonical_size=m.canonical_size, method="rows")

  def head(v, pooled):
    return TwoFCHead(detector.num_classes, features=m.head_features).apply({"params": v["params"]["roi_head"]},
                                                                           pooled, train=False)

  def detections(rois, valid, logits, deltas):
    return decode_detections(rois, valid, logits, deltas, image_shape=image_shape)

  return {"features": features, "proposals": proposals, "pool": pool, "head": head, "detections": detections}


def measure(config, size: int, batch_size: int, rounds: int):
  _, _, batch, detector, variables = sized_batch_and_variables(config, WORKDIR.value, size=size,
                                                               batch_size=batch_size)
  images = jnp.asarray(batch["image"])
  fns = {k: jax.jit(f) for k, f in stages(detector, (size, size)).items()}
  predict = make_predict_fn(detector)
  maps, obj, deltas = fns["features"](variables, images)
  rois, _, valid = fns["proposals"](obj, deltas)
  pooled = fns["pool"](maps, rois, valid)
  logits, box = fns["head"](variables, pooled)
  b, s = valid.shape
  logits, box = logits.reshape(b, s, -1), box.reshape(b, s, *box.shape[1:])
  calls = {"features": lambda: fns["features"](variables, images), "proposals": lambda: fns["proposals"](obj, deltas),
           "pool": lambda: fns["pool"](maps, rois, valid), "head": lambda: fns["head"](variables, pooled),
           "detections": lambda: fns["detections"](rois, valid, logits, box),
           "predict": lambda: predict(variables, {"image": images})}
  for call in calls.values():
    jax.block_until_ready(call())
  wall, cpu = {k: [] for k in calls}, {k: [] for k in calls}
  for _ in range(rounds):
    for k, call in calls.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(call())
      wall[k].append(time.perf_counter() - start)
      cpu[k].append(time.process_time() - start_cpu)
  print(f"size {size}, batch {batch_size}: proposals valid per image {np.asarray(valid).sum(1).tolist()}")
  total = sum(min(cpu[k]) for k in calls if k != "predict")
  for k in calls:
    print(f"  {k:<11} CPU best {1e3 * min(cpu[k]):8.1f} ms  median {1e3 * float(np.median(cpu[k])):8.1f} ms"
          f"  wall best {1e3 * min(wall[k]):8.1f} ms"
          + (f"  ({100 * min(cpu[k]) / total:4.1f}% of stages)" if k != "predict" else
             f"  (stages sum {1e3 * total:.1f} ms; {batch_size / min(cpu[k]):.1f} img/s of CPU time)"))


def main(argv):
  del argv
  print(f"affinity {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}")
  for size in map(int, SIZES.value):
    measure(CONFIG.value, size, BATCH.value, ROUNDS.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
