"""Benchmark: feeding the train step — host loader against the decoded cache, and augmentation on the device.

  python experiments/bench/feed.py [--batch_size=16] [--batches=30] [--steps=10] [--rounds=5] [--device=cpu]
      [--sections=loader,device] [--train_workdir=DIR ...]

On the `shapes/default` training split (128 x 128 PNGs; `--data_dir` or the default tfds dir), in one run:
1. Loader images/s, in this process, first batch not timed: `make_loader` (read + PNG decode + augment + collate:
   the host pipeline train.py uses by default) with the CenterNet shapes config's augmentation (flips) and with
   CenterNet's full recipe (flip, scale 0.6-1.3 + crop, colour jitter); the same over a `MemoizedSource` that has
   kept every decoded example (train.py's host pipeline after the first epoch); then `make_cached_loader` (a gather
   from the decoded uint8 cache, what `config.data.device_augment` uses), after building the cache (timed apart).
2. On the device (`--device`), the CenterNet shapes network at `--batch_size`, each timed over `--steps` steps on
   a batch already on the device: the jitted train step alone; the device augmentation alone (both recipes); and
   the step with the augmentation in the same jit — its rate over the step's is the cost of augmenting there.
3. With `--train_workdir=DIR` (repeatable): the training images/s that `experiments/train.py` logged in
   DIR/metrics.jsonl (median of the records after the first), over the step-alone rate of section 2: the issue's
   "train.py at >= 80% of the step-alone rate" ratio.
There is no external peer: the host pipeline is the baseline, and the step alone the ceiling.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxdet.data.cache import build_cache, make_cached_loader  # noqa: E402
from jaxdet.data.device_augment import augment_batch  # noqa: E402
from jaxdet.data.loader import make_loader  # noqa: E402
from jaxdet.data.memoized import MemoizedSource  # noqa: E402
from jaxdet.data.transforms import Augment  # noqa: E402
import train_step  # noqa: E402  (its flags --batch_size, --steps, --rounds, --device serve here too)
from train_step import load_config, synthetic_batch  # noqa: E402

_BATCH, _STEPS, _ROUNDS, _DEVICE = train_step._BATCH, train_step._STEPS, train_step._ROUNDS, train_step._DEVICE
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir holding shapes/default")
_BATCHES = flags.DEFINE_integer("batches", 30, "timed loader batches per configuration (after the first)")
_SECTIONS = flags.DEFINE_list("sections", ["loader", "device"], "loader, device")
_TRAIN_WORKDIRS = flags.DEFINE_multi_string("train_workdir", [], "train.py work directories to summarise")

RECIPES = {"config (flips)": Augment(scale_range=None, brightness=0.0, contrast=0.0, saturation=0.0, lighting=0.0),
           "full CenterNet": Augment()}


def _source():
  from jaxdet.data.shapes import ShapesSource  # pylint: disable=import-outside-toplevel
  return ShapesSource("train", config="default", data_dir=_DATA_DIR.value)


def _loader_rate(loader) -> tuple[float, float]:
  """Returns (first-batch seconds, images/s over the timed batches) of a training loader."""
  start = time.perf_counter()
  it = iter(loader)
  next(it)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  rate = _BATCHES.value * _BATCH.value / (time.perf_counter() - start)
  it.close()
  return first, rate


def loader_section(source) -> None:
  print(f"\n1. loader, {_BATCH.value} x 128^2 per batch, {_BATCHES.value} timed batches, in process")
  print(f"{'pipeline':44s} {'first batch (s)':>16s} {'images/s':>9s}")
  common = dict(batch_size=_BATCH.value, seed=0, shard_index=0, shard_count=1)
  rates = {}
  for name, augment in RECIPES.items():
    loader = make_loader(source, image_size=128, train=True, max_boxes=16, augment=augment, **common)
    first, rates[name] = _loader_rate(loader)
    print(f"{'host: decode + ' + name + ' + collate':44s} {first:16.2f} {rates[name]:9.1f}", flush=True)
  kept = MemoizedSource(source, max_bytes=2**40)
  for i in range(len(kept)):  # the first epoch reads and keeps every example
    kept[i]  # pylint: disable=pointless-statement
  for name, augment in RECIPES.items():
    loader = make_loader(kept, image_size=128, train=True, max_boxes=16, augment=augment, **common)
    first, rate = _loader_rate(loader)
    print(f"{'host, examples kept: ' + name + ' + collate':44s} {first:16.2f} {rate:9.1f}   "
          f"{rate / rates[name]:.1f}x decoding", flush=True)
  start = time.perf_counter()
  cache = build_cache(source, image_size=128, max_boxes=16)
  built = time.perf_counter() - start
  first, cached = _loader_rate(make_cached_loader(cache, **common))
  print(f"{'cached: gather (augmentation on the device)':44s} {first:16.2f} {cached:9.1f}")
  print(f"decoded cache of {len(cache)} images built in {built:.1f} s ({len(cache) / built:.0f} images/s, "
        f"{cache.arrays['image'].nbytes / 2**20:.0f} MiB); cached / host: "
        + ", ".join(f"{cached / r:.1f}x ({n})" for n, r in rates.items()))


def _best_rate(fn, *args) -> float:
  """Images/s of the best of `--rounds` rounds of `--steps` calls of `fn(*args)` (compiled before timing)."""
  jax.block_until_ready(fn(*args))
  best = 0.0
  for _ in range(_ROUNDS.value):
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      out = fn(*args)
    jax.block_until_ready(out)
    best = max(best, _STEPS.value * _BATCH.value / (time.perf_counter() - start))
  return best


def device_section() -> float:
  """Prints the device rates; returns the step-alone images/s."""
  from jaxdet.train.loop import build_model  # pylint: disable=import-outside-toplevel
  from jaxdet.train.optim import make_optimizer  # pylint: disable=import-outside-toplevel
  from jaxdet.train.state import create_train_state, train_step  # pylint: disable=import-outside-toplevel
  config = load_config()
  device = jax.devices(_DEVICE.value)[0]
  detector = build_model(config, 5)
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  b = _BATCH.value
  with jax.default_device(device):
    state = create_train_state(detector, tx, image_shape=(128, 128), seed=0)
  batch = dict(synthetic_batch(b, 128, config.data.max_boxes), position=np.arange(b, dtype=np.int32))
  batch = jax.device_put(batch, device)
  state = jax.device_put(state, device)
  step = functools.partial(train_step, detector=detector, tx=tx, schedule=schedule)
  # Every call starts from the same state (not donated; the timing does not depend on the values) and returns the
  # whole new state, so XLA cannot drop the backward pass and the update as dead code.
  step_alone = jax.jit(lambda s, bt: step(s, {k: v for k, v in bt.items() if k != "position"}))
  print(f"\n2. device ({device.device_kind}), batch {b}, best of {_ROUNDS.value} rounds of {_STEPS.value} steps")
  print(f"{'what':44s} {'images/s':>9s} {'/ step alone':>13s}")
  alone = _best_rate(step_alone, state, batch)
  print(f"{'train step alone':44s} {alone:9.1f} {1.0:13.2f}", flush=True)
  for name, augment in RECIPES.items():
    aug = jax.jit(functools.partial(augment_batch, seed=0, size=128, augment=augment))
    rate = _best_rate(aug, batch)
    print(f"{'augmentation alone, ' + name:44s} {rate:9.1f} {'':>13s}", flush=True)
    fused = jax.jit(lambda s, bt, augment=augment: step(s, augment_batch(bt, seed=0, size=128, augment=augment)))
    rate = _best_rate(fused, state, batch)
    print(f"{'step with augmentation, ' + name:44s} {rate:9.1f} {rate / alone:13.2f}", flush=True)
  return alone


def train_section(step_alone: float | None) -> None:
  print("\n3. experiments/train.py (images/s logged in metrics.jsonl: median of the records after the first)")
  for workdir in _TRAIN_WORKDIRS.value:
    rates, config = [], {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
      record = json.loads(line)
      if "train/images_per_second" in record:
        rates.append(record["train/images_per_second"])
    if os.path.exists(os.path.join(workdir, "config.json")):
      config = json.load(open(os.path.join(workdir, "config.json")))
    data = config.get("data", {})
    what = (f"batch {config.get('batch_size')}, device_augment={data.get('device_augment', False)}, "
            f"prefetch_to_device={config.get('prefetch_to_device', 0)}, workers={data.get('worker_count', 0)}")
    if len(rates) < 2:
      print(f"{workdir}: fewer than two rate records")
      continue
    rate = statistics.median(rates[1:])
    ratio = f"; / step alone {rate / step_alone:.2f}" if step_alone else ""
    print(f"{workdir} ({what}): {rate:.1f} images/s{ratio}")


def main(argv):
  del argv
  print(f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}; jax {jax.__version__}, {jax.devices(_DEVICE.value)[0].device_kind}")
  if "loader" in _SECTIONS.value:
    loader_section(_source())
  alone = device_section() if "device" in _SECTIONS.value else None
  if _TRAIN_WORKDIRS.value:
    train_section(alone)


if __name__ == "__main__":
  app.run(main)
