"""Benchmark: jaxdet's `nms` / `batched_nms` against torchvision's kernels on detector-like boxes.

  python experiments/bench/nms.py --repeats=20                  # CPU: both algorithms vs torchvision's C++ kernels
  python experiments/bench/nms.py --device=gpu --repeats=50     # first GPU vs torchvision's CUDA kernels

For each case, generates boxes clustered around objects (as a detector's raw output: many near-duplicates that
NMS removes, plus scattered background boxes), checks that jaxdet and torchvision keep the same indices in the
same order, then prints jaxdet's compile time and the best warm wall time of each, with the ratio. torchvision
has no `max_outputs`: it runs to the end and its result is cut, as torchvision's own RPN does. Each jaxdet
algorithm in `--algorithms` is timed ("tiled": the CPU default; "bitmask": the default on GPUs and TPUs).

The `vmap` cases time `jax.vmap(nms)` over a batch of images against a loop of single-image jitted calls and
against torchvision called once per image. Without torchvision (see experiments/bench/torchvision_cpu_peer.sh)
only jaxdet is timed.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import time

from absl import app, flags
import jax
import numpy as np

from jaxdet.ops.nms import ALGORITHMS, DEFAULT_CHUNK, DEFAULT_SWEEP, DEFAULT_TILE, batched_nms, nms

_REPEATS = flags.DEFINE_integer("repeats", 20, "timed runs of each implementation (the best is reported)")
_TILE = flags.DEFINE_integer("tile_size", DEFAULT_TILE, "jaxdet tile_size")
_CHUNK = flags.DEFINE_integer("chunk_size", DEFAULT_CHUNK, "jaxdet chunk_size")
_SWEEP = flags.DEFINE_integer("sweep_size", DEFAULT_SWEEP, "jaxdet sweep_size")
_CASES = flags.DEFINE_list("cases", None, "names of the cases to run (default: all)")
_ALGORITHMS = flags.DEFINE_list("algorithms", ["tiled", "bitmask"], f"jaxdet algorithms to time, of {ALGORITHMS}")
_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "where jaxdet and torchvision run")


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  num_boxes: int
  iou_threshold: float
  max_outputs: int
  num_classes: int = 0  # 0: class-agnostic `nms`
  batch: int = 0  # > 0: jax.vmap over this many images (seeds 0..batch-1)


CASES = (
    Case("nms-1k", 1000, 0.5, 1000),
    Case("nms-5k", 5000, 0.5, 5000),
    Case("nms-20k", 20000, 0.5, 20000),
    Case("rpn-6k-to-1k", 6000, 0.7, 1000),
    Case("batched-5k-80cls", 5000, 0.5, 5000, num_classes=80),
    Case("batched-20k-80cls", 20000, 0.5, 20000, num_classes=80),
    Case("batched-5k-80cls-top100", 5000, 0.5, 100, num_classes=80),
    Case("vmap-8x5k-top100", 5000, 0.5, 100, batch=8),
    Case("vmap-8x1k-80cls-top100", 1000, 0.5, 100, num_classes=80, batch=8),
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


def _peer_fn(case: Case, torch, torchvision, device: str):
  """Returns `(run() -> kept indices per image, one call per image)` for torchvision, on `device`."""
  images = [detector_boxes(case.num_boxes, case.num_classes, seed) for seed in range(max(case.batch, 1))]
  tensors = [tuple(torch.from_numpy(a).to(device) for a in image) for image in images]

  def run():
    out = []
    for boxes, scores, classes in tensors:
      if case.num_classes:
        out.append(torchvision.ops.batched_nms(boxes, scores, classes, case.iou_threshold))
      else:
        out.append(torchvision.ops.nms(boxes, scores, case.iou_threshold))
    if device != "cpu":
      torch.cuda.synchronize()
    return out

  return run


def run_case(case: Case, algorithm: str, torch, torchvision, device: str) -> None:
  images = [detector_boxes(case.num_boxes, case.num_classes, seed) for seed in range(max(case.batch, 1))]
  sizes = dict(tile_size=_TILE.value, chunk_size=_CHUNK.value, sweep_size=_SWEEP.value)
  op = batched_nms if case.num_classes else nms
  fn = functools.partial(op, iou_threshold=case.iou_threshold, max_outputs=case.max_outputs, algorithm=algorithm,
                         **sizes)
  arity = 3 if case.num_classes else 2
  if case.batch:
    args = jax.device_put(tuple(np.stack([image[i] for image in images]) for i in range(arity)))
    batched_fn = jax.vmap(fn)
  else:
    args = jax.device_put(images[0][:arity])
    batched_fn = fn
  start = time.perf_counter()
  compiled = jax.jit(batched_fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  idx, valid = (np.asarray(a) for a in compiled(*args))
  kept = [i[v].tolist() for i, v in zip(idx.reshape(-1, case.max_outputs), valid.reshape(-1, case.max_outputs))]
  ours = best_time(lambda: jax.block_until_ready(compiled(*args)), _REPEATS.value)
  line = (f"{case.name:<24} {algorithm:<8} N={case.num_boxes:<6} t={case.iou_threshold:<4} max={case.max_outputs:<6} "
          f"kept={sum(map(len, kept)):<6} compile {compile_s:5.2f} s, run {ours * 1e3:8.2f} ms")
  if case.batch:  # the same images, one jitted call each
    single = jax.jit(fn).lower(*(a[0] for a in args)).compile()
    per_image = [tuple(a[i] for a in args) for i in range(case.batch)]
    loop = best_time(lambda: jax.block_until_ready([single(*a) for a in per_image]), _REPEATS.value)
    line += f" | loop of calls {loop * 1e3:8.2f} ms, vmap / loop {ours / loop:5.2f}"
  if torchvision is None:
    print(line, flush=True)
    return
  peer = _peer_fn(case, torch, torchvision, device)
  want = [k.cpu().numpy()[:case.max_outputs].tolist() for k in peer()]
  if kept != want:
    raise AssertionError(f"{case.name}: jaxdet ({algorithm}) and torchvision disagree "
                         f"({sum(map(len, kept))} vs {sum(map(len, want))} kept)")
  theirs = best_time(peer, _REPEATS.value)
  print(f"{line} | torchvision {theirs * 1e3:8.2f} ms | ratio {ours / theirs:5.3f}", flush=True)


def main(argv):
  del argv
  if _DEVICE.value == "cpu":
    jax.config.update("jax_platforms", "cpu")
  device = "cuda" if _DEVICE.value == "gpu" else "cpu"
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torchvision  # pylint: disable=import-outside-toplevel
    torchvision.ops.nms(torch.zeros((1, 4), device=device), torch.zeros((1,), device=device), 0.5)  # kernels load
    peer = f"torch {torch.__version__}, torchvision {torchvision.__version__} ({device} kernels)"
  except (ImportError, RuntimeError, AssertionError) as error:
    torch = torchvision = None
    peer = f"torchvision unavailable ({error}); timing jaxdet only"
  print(f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind} "
        f"({jax.devices()[0].platform}), jax {jax.__version__}; {peer}")
  print(f"jaxdet tile_size={_TILE.value} chunk_size={_CHUNK.value} sweep_size={_SWEEP.value}; "
        f"best of {_REPEATS.value} warm runs")
  for case in CASES:
    if _CASES.value is None or case.name in _CASES.value:
      for algorithm in _ALGORITHMS.value:
        run_case(case, algorithm, torch, torchvision, device)


if __name__ == "__main__":
  app.run(main)
