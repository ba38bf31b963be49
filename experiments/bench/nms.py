"""Benchmark: jaxdet's `nms` / `batched_nms` against torchvision's CPU kernels on detector-like boxes.

  python experiments/bench/nms.py --repeats=20

For each case, generates boxes clustered around objects (as a detector's raw output: many near-duplicates that
NMS removes, plus scattered background boxes), checks that jaxdet and torchvision keep the same indices in the
same order, then prints jaxdet's compile time and the best warm wall time of each, with the ratio. torchvision
has no `max_outputs`: it runs to the end and its result is cut, as torchvision's own RPN does. Without
torchvision (see experiments/bench/torchvision_cpu_peer.sh) only jaxdet is timed.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import time

from absl import app, flags
import jax
import numpy as np

from jaxdet.ops.nms import DEFAULT_CHUNK, DEFAULT_SWEEP, DEFAULT_TILE, batched_nms, nms

_REPEATS = flags.DEFINE_integer("repeats", 20, "timed runs of each implementation (the best is reported)")
_TILE = flags.DEFINE_integer("tile_size", DEFAULT_TILE, "jaxdet tile_size")
_CHUNK = flags.DEFINE_integer("chunk_size", DEFAULT_CHUNK, "jaxdet chunk_size")
_SWEEP = flags.DEFINE_integer("sweep_size", DEFAULT_SWEEP, "jaxdet sweep_size")
_CASES = flags.DEFINE_list("cases", None, "names of the cases to run (default: all)")


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  num_boxes: int
  iou_threshold: float
  max_outputs: int
  num_classes: int = 0  # 0: class-agnostic `nms`


CASES = (
    Case("nms-5k", 5000, 0.5, 5000),
    Case("nms-20k", 20000, 0.5, 20000),
    Case("rpn-6k-to-1k", 6000, 0.7, 1000),
    Case("batched-5k-80cls", 5000, 0.5, 5000, num_classes=80),
    Case("batched-20k-80cls", 20000, 0.5, 20000, num_classes=80),
    Case("batched-5k-80cls-top100", 5000, 0.5, 100, num_classes=80),
)


def detector_boxes(num_boxes: int, num_classes: int, seed: int = 0):
  """Returns `(boxes [N, 4], scores [N], classes [N])`: a 1333 x 800 image with N / 100 objects.

  80% of the boxes are copies of an object's box with Gaussian noise of 12% of its size, scored higher the
  closer they are; 20% are random background boxes with low scores. A box takes its object's class with
  probability 0.7, else a random one (detectors emit the same box for several classes). Scores are distinct, so
  every tie-breaking rule gives the same order.
  """
  rng = np.random.default_rng(seed)
  num_objects = max(1, num_boxes // 100)
  wh = np.exp(rng.uniform(np.log(16), np.log(400), (num_objects, 2)))
  xy = rng.uniform(0, 1, (num_objects, 2)) * np.maximum([1333, 800] - wh, 1)
  source = rng.integers(0, num_objects, num_boxes)
  jitter = rng.normal(0, 0.12, (num_boxes, 4)) * np.tile(wh[source], 2)
  boxes = np.concatenate([xy, xy + wh], axis=1)[source] + jitter
  background = rng.uniform(size=num_boxes) < 0.2
  random_xy = rng.uniform(0, 1, (num_boxes, 2)) * [1333, 800]
  random_wh = np.exp(rng.uniform(np.log(8), np.log(300), (num_boxes, 2)))
  boxes[background] = np.concatenate([random_xy, random_xy + random_wh], axis=1)[background]
  boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
  closeness = np.exp(-5 * np.abs(jitter).mean(axis=1) / wh[source].mean(axis=1))
  quality = np.where(background, rng.uniform(0, 0.5, num_boxes), closeness * rng.uniform(0.6, 1, num_boxes))
  scores = np.empty(num_boxes, np.float32)
  scores[np.argsort(quality, kind="stable")] = (np.arange(num_boxes) + 1) / num_boxes
  object_class = rng.integers(0, max(num_classes, 1), num_objects)
  classes = np.where(rng.uniform(size=num_boxes) < 0.7, object_class[source],
                     rng.integers(0, max(num_classes, 1), num_boxes))
  return boxes.astype(np.float32), scores, classes.astype(np.int32)


def best_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def run_case(case: Case, torch, torchvision) -> None:
  boxes, scores, classes = detector_boxes(case.num_boxes, case.num_classes)
  sizes = dict(tile_size=_TILE.value, chunk_size=_CHUNK.value, sweep_size=_SWEEP.value)
  if case.num_classes:
    fn = functools.partial(batched_nms, iou_threshold=case.iou_threshold, max_outputs=case.max_outputs, **sizes)
    args = (boxes, scores, classes)
  else:
    fn = functools.partial(nms, iou_threshold=case.iou_threshold, max_outputs=case.max_outputs, **sizes)
    args = (boxes, scores)
  args = jax.device_put(args)
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  idx, valid = compiled(*args)
  kept = np.asarray(idx)[np.asarray(valid)]
  ours = best_time(lambda: jax.block_until_ready(compiled(*args)), _REPEATS.value)
  line = (f"{case.name:<24} N={case.num_boxes:<6} t={case.iou_threshold:<4} max={case.max_outputs:<6} "
          f"kept={len(kept):<6} jaxdet compile {compile_s:5.2f} s, run {ours * 1e3:8.2f} ms")
  if torchvision is None:
    print(line)
    return
  t_boxes, t_scores, t_classes = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
  if case.num_classes:
    peer = lambda: torchvision.ops.batched_nms(t_boxes, t_scores, t_classes, case.iou_threshold)
  else:
    peer = lambda: torchvision.ops.nms(t_boxes, t_scores, case.iou_threshold)
  want = peer().numpy()[:case.max_outputs]
  if kept.tolist() != want.tolist():
    raise AssertionError(f"{case.name}: jaxdet and torchvision disagree ({len(kept)} vs {len(want)} kept)")
  theirs = best_time(peer, _REPEATS.value)
  print(f"{line} | torchvision {theirs * 1e3:8.2f} ms | ratio {ours / theirs:5.3f}")


def main(argv):
  del argv
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
    torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros((1,)), 0.5)  # the CPU kernels are really there
    peer = f"torch {torch.__version__}, torchvision {torchvision.__version__} (CPU kernels)"
  except (ImportError, RuntimeError) as error:
    torch = torchvision = None
    peer = f"torchvision unavailable ({error}); timing jaxdet only"
  print(f"{platform.processor() or platform.machine()}, {jax.device_count()} x {jax.devices()[0].platform}, "
        f"jax {jax.__version__}; {peer}")
  print(f"jaxdet tile_size={_TILE.value} chunk_size={_CHUNK.value} sweep_size={_SWEEP.value}; "
        f"best of {_REPEATS.value} warm runs")
  for case in CASES:
    if _CASES.value is None or case.name in _CASES.value:
      run_case(case, torch, torchvision)


if __name__ == "__main__":
  app.run(main)
