"""Benchmark: Precise RoI Pooling of an IoU-Net training step, run formulation (`prroi_pool`, per level with the
other levels' boxes masked) against the dense separable one (`multilevel_prroi_pool`, vmapped over images).

  python experiments/bench/prroi_levels.py --batch=16 --rois=32 --channels=64 --repeats=5

FPN P2-P5 maps of 128 x 128 images (32, 16, 8, 4 cells), boxes of 6-60 px, 7 x 7 output. "features" is the
forward pass plus the gradient w.r.t. the features (what training the IoU branch needs); "features + boxes" adds the
gradient w.r.t. the boxes (refinement). Both formulations first agree to 1e-4. Best of `--repeats` warm runs.
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.ops import fpn_levels, multilevel_prroi_pool, prroi_pool

_BATCH = flags.DEFINE_integer("batch", 16, "images")
_ROIS = flags.DEFINE_integer("rois", 32, "boxes per image")
_CHANNELS = flags.DEFINE_integer("channels", 64, "feature channels")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed warm runs (the best is reported)")
STRIDES = (4, 8, 16, 32)


def run_formulation(maps, boxes):
  b, s, _ = boxes.shape
  flat = boxes.reshape(-1, 4)
  level = fpn_levels(flat, canonical_size=56)
  index = jnp.repeat(jnp.arange(b), s)
  return sum(prroi_pool(m, flat, jnp.where(level == lvl, index, -1), output_size=7, spatial_scale=1 / stride)
             for lvl, (m, stride) in enumerate(zip(maps, STRIDES), start=2)).reshape(b, s, 7, 7, -1)


def dense_formulation(maps, boxes):
  return jax.vmap(lambda *a: multilevel_prroi_pool(a[:4], a[4], output_size=7, strides=STRIDES,
                                                   canonical_size=56))(*maps, boxes)


def best_time(fn, *args):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  b, s, c = _BATCH.value, _ROIS.value, _CHANNELS.value
  maps = [jnp.asarray(rng.normal(size=(b, 128 // st, 128 // st, c)), jnp.float32) for st in STRIDES]
  xy = rng.uniform(-5, 100, (b, s, 2))
  boxes = jnp.asarray(np.concatenate([xy, xy + rng.uniform(6, 60, (b, s, 2))], -1), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(b, s, 7, 7, c)), jnp.float32)
  print(f"{b} images x {s} boxes, {c} channels, P2-P5 of 128 x 128 images; jax {jax.__version__}")
  for name, fn in (("run (prroi_pool)", run_formulation), ("dense (multilevel_prroi_pool)", dense_formulation)):
    forward = jax.jit(fn)
    features = jax.jit(lambda m, x: jax.vjp(lambda mm: fn(mm, x), m)[1](cotangent))
    both = jax.jit(lambda m, x: jax.vjp(fn, m, x)[1](cotangent))
    times = [best_time(f, maps, boxes) * 1e3 for f in (forward, features, both)]
    print(f"{name}: forward {times[0]:.0f} ms, forward + backward (features) {times[1]:.0f} ms, "
          f"(features + boxes) {times[2]:.0f} ms")
  np.testing.assert_allclose(jax.jit(run_formulation)(maps, boxes), jax.jit(dense_formulation)(maps, boxes),
                             rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
  app.run(main)
