"""Benchmark: images/s of the training input pipeline (read + augment + batch), with and without Mosaic, by workers.

  python experiments/bench/data.py --size=512 --batch_size=16 --batches=24 --workers=0,1,2

Reads `shapes/large` (256 x 256 PNGs in array_record, generated into `--data_dir` on first use; resized up by the
augmentation) or, with `--source=generated` or when the shapes set is unavailable, an in-memory `ListSource` of
generated 256 x 256 scenes. Each configuration runs the real `make_loader` pipeline; the first batch (worker
start-up) is timed separately and not counted. Also prints the evaluation pipeline (read + letterbox + batch) as a
reference, and a per-stage breakdown of one example measured in this process.
"""

from __future__ import annotations

import os
import platform
import time

from absl import app, flags
import numpy as np

from jaxdet.data import geometric, photometric
from jaxdet.data.loader import collate, make_loader
from jaxdet.data.mosaic import mosaic
from jaxdet.data.source import ListSource, make_example
from jaxdet.data.transforms import Augment

_SOURCE = flags.DEFINE_enum("source", "shapes", ["shapes", "generated"], "shapes/large, else generated scenes")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir of the shapes set")
_SIZE = flags.DEFINE_integer("size", 512, "network input side")
_BATCH = flags.DEFINE_integer("batch_size", 16, "images per batch")
_BATCHES = flags.DEFINE_integer("batches", 24, "timed batches per configuration (after the first)")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker process counts to measure")
_READ_THREADS = flags.DEFINE_integer("read_threads", 1, "grain ReadOptions.num_threads in each process")


def _load_source():
  if _SOURCE.value == "shapes":
    try:
      from jaxdet.data.shapes import ShapesSource  # pylint: disable=g-import-not-at-top
      return ShapesSource("train", config="large", data_dir=_DATA_DIR.value), "shapes/large train (PNG, 256x256)"
    except ImportError as e:
      print(f"shapes set unavailable ({e}); using generated scenes")
  return _generated_source(256), "generated ListSource (in memory, 256x256)"


def _generated_source(num, size=256, seed=0):
  """`num` scenes of 1..6 random filled rectangles on random flat backgrounds (in memory, nothing to decode)."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(num):
    image = np.empty((size, size, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    wh = rng.integers(size // 12, size // 2, (int(rng.integers(1, 7)), 2))
    xy = rng.integers(0, size - wh)
    for (x, y), (w, h) in zip(xy, wh):
      image[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    examples.append(make_example(image, np.concatenate([xy, xy + wh], 1), rng.integers(0, 5, len(wh)),
                                 image_id=i + 1))
  return ListSource(examples, [f"class{k}" for k in range(5)])


def _run(source, *, train, mosaic_prob, workers):
  """Returns (first-batch seconds, images/s over the timed batches, CPU ms per image of this process)."""
  loader = make_loader(source, batch_size=_BATCH.value, image_size=_SIZE.value, train=train, max_boxes=64, seed=0,
                       mosaic_prob=mosaic_prob, shard_index=0, shard_count=1, worker_count=workers,
                       read_threads=_READ_THREADS.value)
  start = time.perf_counter()
  it = iter(loader)
  next(it)
  first = time.perf_counter() - start
  timed = _BATCHES.value if loader.num_batches is None else min(_BATCHES.value, loader.num_batches - 1)
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(timed):
    next(it)
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  it.close()
  images = timed * _BATCH.value
  return first, images / seconds, cpu / images * 1e3


def _stage_times(source, repeats=40):
  """Milliseconds per example of each training stage, measured one after the other in this process."""
  rng = np.random.default_rng(0)
  size, a = _SIZE.value, Augment()
  times = {}

  def clock(name, fn):
    start = time.perf_counter()
    for _ in range(repeats):
      out = fn()
    times[name] = (time.perf_counter() - start) / repeats * 1e3
    return out

  ex = clock("read (decode)", lambda: source[int(rng.integers(len(source)))])
  four = [source[i] for i in range(4)]
  clock("mosaic + scale + crop", lambda: mosaic(four, size, rng=rng, scale_range=a.scale_range))
  cropped = clock("scale + crop", lambda: geometric.random_scale_crop(ex, size, rng=rng))
  clock("flip (stored image)", lambda: geometric.hflip(ex))
  jittered = clock("colour jitter", lambda: photometric.color_jitter(cropped, rng=rng, brightness=a.brightness,
                                                                      contrast=a.contrast, saturation=a.saturation,
                                                                      lighting=a.lighting))
  jittered["example_valid"] = np.bool_(True)
  batch = [jittered] * _BATCH.value
  clock("_collate", lambda: collate(batch, max_boxes=64))
  times["collate (per image)"] = times.pop("_collate") / _BATCH.value
  clock("letterbox (eval)", lambda: geometric.letterbox(ex, size))
  return times


def main(argv):
  del argv
  source, name = _load_source()
  print(f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; source: {name}, "
        f"{len(source)} images; {_SIZE.value}x{_SIZE.value}, batch {_BATCH.value}, {_BATCHES.value} timed batches, "
        f"read_threads={_READ_THREADS.value}")
  print("\nper-stage cost, one example (ms):")
  for stage, ms in _stage_times(source).items():
    print(f"  {stage:22s} {ms:7.2f}")
  print(f"\n{'pipeline':24s} {'workers':>7s} {'first batch (s)':>16s} {'images/s':>9s} {'CPU ms/image':>13s}")
  rows = [("train, no Mosaic", True, 0.0), ("train, Mosaic (p=1)", True, 1.0), ("eval (letterbox)", False, 0.0)]
  for label, train, mosaic_prob in rows:
    for workers in (int(w) for w in _WORKERS.value):
      if not train and workers:
        continue  # the eval reference runs once, in process
      first, rate, cpu_ms = _run(source, train=train, mosaic_prob=mosaic_prob, workers=workers)
      cpu = f"{cpu_ms:13.1f}" if workers == 0 else f"{'(in workers)':>13s}"
      print(f"{label:24s} {workers:7d} {first:16.2f} {rate:9.1f} {cpu}", flush=True)


if __name__ == "__main__":
  app.run(main)
