"""Benchmark: inference images/s of trained detectors at their training size -- the jitted predict step (forward pass,
decoding, NMS, fixed-size detections) on one batch of validation images, compilation timed apart.

  python experiments/bench/inference.py \
      --runs=yolov1_shapes:runs/yolov1_shapes/seed0,yolov2_shapes:runs/yolov2_shapes/seed0,\
centernet_shapes:runs/centernet_shapes/seed0 --batch_size=64 --repeats=10

Each run is `CONFIG_NAME:WORKDIR` (its best checkpoint; `CONFIG_NAME:` alone uses freshly initialised weights, which
change the NMS load). The detectors run in turn in this process on the same images (letterboxed validation images of
the config's data set), so their ratios compare like with like; the first run is the reference of the ratio column.
Input pipeline and host transfer of the detections are not timed (`block_until_ready` on the device result).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.evaluate import make_predict_fn  # noqa: E402
from jaxdet.train.loop import build_model, initial_state, restore_variables  # noqa: E402

_RUNS = flags.DEFINE_list("runs", ["yolov1_shapes:", "yolov2_shapes:"], "CONFIG_NAME:WORKDIR pairs")
_BATCH = flags.DEFINE_integer("batch_size", 64, "images per predict step")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed predict steps (the best and the median are reported)")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "which checkpoint of each WORKDIR")


def load_config(name: str):
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def measure(name: str, workdir: str, batch_size: int, repeats: int) -> dict[str, float]:
  config = load_config(name)
  config.eval_batch_size = batch_size
  source = inputs.build_source(config, config.data.eval_split)
  detector = build_model(config, source.num_classes)
  if workdir:
    variables, step = restore_variables(config, workdir, detector, which=_CHECKPOINT.value)
  else:
    variables, step = initial_state(config, detector)[0].variables(), 0
  batch = next(iter(inputs.eval_loader(config, source)))
  predict = make_predict_fn(detector)
  start = time.perf_counter()
  jax.block_until_ready(predict(variables, batch))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(predict(variables, batch))
    times.append(time.perf_counter() - start)
  n = batch["image"].shape[0]
  return {"step": step, "size": batch["image"].shape[1], "compile_s": compile_s, "best": n / min(times),
          "median": n / float(np.median(times))}


def main(argv):
  del argv
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"({jax.devices()[0].platform}); batch {_BATCH.value}, {_REPEATS.value} repeats")
  print(f"{'config':<20} {'checkpoint':<10} {'input':>6} {'compile s':>10} {'img/s best':>11} {'img/s median':>13} "
        f"{'ratio':>6}")
  reference = None
  for run in _RUNS.value:
    name, _, workdir = run.partition(":")
    r = measure(name, workdir, _BATCH.value, _REPEATS.value)
    reference = reference or r["best"]
    print(f"{name:<20} {('step ' + str(r['step'])) if workdir else 'init':<10} {r['size']:>6} {r['compile_s']:>10.1f} "
          f"{r['best']:>11.1f} {r['median']:>13.1f} {r['best'] / reference:>6.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
