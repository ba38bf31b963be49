"""Benchmark: inference images/s of Faster R-CNN — jaxdet's jitted predict step against torchvision's `FasterRCNN` of
the same shape — at several input sizes, in one process on the same images.

  taskset -c 0 python experiments/bench/faster_rcnn_inference.py \
      --config=experiments/configs/faster_rcnn_fpn_shapes.py --workdir=runs/faster_rcnn_fpn_shapes/seed0 \
      --peer_weights=runs/peers/faster_rcnn_fpn_shapes/seed0/best.pt --sizes=128,512 --batch_size=8 --threads=1

Both models are built from the same config at each size (`data.image_size`; torchvision's `min_size = max_size`
= the size, as in the peer): the same anchors, proposal counts (`test_pre/post_nms_top_n`), score threshold, NMS and
detections per image. Each measures its trained weights (jaxdet: the best checkpoint of `--workdir`; torchvision:
the peer run's `best.pt`) so that the post-processing does the work of a trained detector; at sizes other than the
training size the same weights see the test images letterboxed up (jaxdet's evaluation transform), which is a speed
measurement, not an accuracy one. Timed: jaxdet's `predict` to `block_until_ready` (compilation apart, first call);
torchvision's `model(images)` under `torch.inference_mode()` in eval mode (one warm-up call). Both get the same float
images; host-side batching is not timed. Besides wall time, each call's CPU time (the process's, all threads) is
reported: on a core shared with other processes it is the steadier measure of what a call costs. Run it under
`taskset -c 0` with `--threads=1` for a one-core comparison (XLA's CPU thread pool then has one core too). Needs
torch and torchvision: run it in the peer environment (`experiments/bench/torchvision_cpu_peer.sh`).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.peers import common  # noqa: E402  (sets torch's OpenMP policy before torch loads)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import machine  # noqa: E402
from experiments.peers import faster_rcnn as peer  # noqa: E402
from experiments.bench.sized import sized_batch_and_variables  # noqa: E402
from jaxdet.train.evaluate import make_predict_fn  # noqa: E402

PEER_WEIGHTS = flags.DEFINE_string("peer_weights", None, "torchvision state dict (a peer run's best.pt); "
                                   "default: freshly initialised weights.")
SIZES = flags.DEFINE_list("sizes", ["128", "512"], "Input sizes (square) to measure.")
BATCH = flags.DEFINE_integer("batch_size", 8, "Images per call.")
REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per model and size (best and median reported).")


def timed(call, repeats: int) -> tuple[float, list[float], list[float]]:
  """Returns (seconds of the first call, wall seconds and CPU seconds of each of `repeats` later calls).

  CPU seconds are the process's (all its threads): on a core shared with other work they are what a call costs,
  while its wall time also counts the turns the other processes take.
  """
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  times, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    call()
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return first, times, cpu


def rates(first: float, times: list[float], cpu: list[float], batch_size: int) -> dict[str, float]:
  """Returns the first call's seconds and images/s: best and median by wall time, best by CPU time."""
  return {"first_s": first, "best": batch_size / min(times), "median": batch_size / float(np.median(times)),
          "cpu_best": batch_size / min(cpu)}


def measure(config, workdir: str | None, size: int, batch_size: int, repeats: int) -> dict[str, dict[str, float]]:
  """Returns per model ("jaxdet", "torchvision") images/s (best, median) and its first call's seconds at `size`."""
  config, source, batch, detector, variables = sized_batch_and_variables(config, workdir, size=size,
                                                                        batch_size=batch_size)
  predict = make_predict_fn(detector)
  out = {}
  out["jaxdet"] = rates(*timed(lambda: jax.block_until_ready(predict(variables, batch)), repeats), batch_size)

  model = peer.build(config, source.num_classes)
  if PEER_WEIGHTS.value:
    model.load_state_dict(torch.load(PEER_WEIGHTS.value, map_location="cpu"))
  model.eval()
  images, _ = common.to_torch(batch, label_offset=1)
  with torch.inference_mode():
    out["torchvision"] = rates(*timed(lambda: model(images), repeats), batch_size)
  return out


def main(argv):
  del argv
  config = common.CONFIG.value
  if common.THREADS.value:
    torch.set_num_threads(common.THREADS.value)
  print(f"machine: {machine.summary(machine.describe())}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), affinity {len(os.sched_getaffinity(0))} cores; batch {BATCH.value}, "
        f"{REPEATS.value} repeats")
  print(f"{'size':>5} {'model':<12} {'first call s':>12} {'img/s best':>11} {'img/s median':>13} {'jaxdet / torch':>15}"
        f" {'img/s of CPU':>13} {'jaxdet / torch':>15}")
  for size in map(int, SIZES.value):
    r = measure(config, common.WORKDIR.value, size, BATCH.value, REPEATS.value)
    for name in ("jaxdet", "torchvision"):
      ratio = f"{r['jaxdet']['best'] / r['torchvision']['best']:.2f}x" if name == "jaxdet" else ""
      cpu_ratio = f"{r['jaxdet']['cpu_best'] / r['torchvision']['cpu_best']:.2f}x" if name == "jaxdet" else ""
      print(f"{size:>5} {name:<12} {r[name]['first_s']:>12.2f} {r[name]['best']:>11.1f} {r[name]['median']:>13.1f} "
            f"{ratio:>15} {r[name]['cpu_best']:>13.1f} {cpu_ratio:>15}", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
