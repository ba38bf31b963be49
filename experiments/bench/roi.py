"""Benchmark: jaxdet's RoI ops against torchvision's CPU kernels on the same inputs, in the same run.

  python experiments/bench/roi.py --num_rois=512 --batch=2 --size=64 --channels=256 --repeats=10

Cases (7 x 7 output, sampling_ratio 2, stride 8, RoIs of 16-256 pixels in 512 x 512 images): roi_align forward,
roi_align forward + backward (gradient w.r.t. the features for a fixed cotangent), and for information roi_pool
forward (peer: torchvision) and prroi_pool forward and forward + backward (no peer in torchvision). Each case first
checks that jaxdet and the peer agree, then times both: compilation once, then warm runs, the best of
`--repeats`, jaxdet and the peer alternating so that load from other processes hits both alike. torch uses as
many threads as XLA sees cores. The peer is skipped with a message when torch or torchvision is missing.
"""

from __future__ import annotations

import os
import platform
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.ops import prroi_pool, roi_align, roi_pool

_NUM_ROIS = flags.DEFINE_integer("num_rois", 512, "RoIs")
_BATCH = flags.DEFINE_integer("batch", 2, "images")
_SIZE = flags.DEFINE_integer("size", 64, "feature map height and width")
_CHANNELS = flags.DEFINE_integer("channels", 256, "feature channels")
_OUTPUT = flags.DEFINE_integer("output_size", 7, "bins per side")
_RATIO = flags.DEFINE_integer("sampling_ratio", 2, "roi_align points per bin and axis")
_STRIDE = flags.DEFINE_integer("stride", 8, "image pixels per feature cell")
_REPEATS = flags.DEFINE_integer("repeats", 10, "timed warm runs per implementation (the best is reported)")
_SEED = flags.DEFINE_integer("seed", 0, "random inputs")


def make_inputs(seed, *, num_rois, batch, size, channels, stride):
  """Returns `(features [B, H, W, C], boxes [R, 4] image pixels, box_indices [R])`, float32 / int32."""
  rng = np.random.default_rng(seed)
  image = size * stride
  features = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
  wh = np.exp(rng.uniform(np.log(16), np.log(256), (num_rois, 2)))
  xy = rng.uniform(0, 1, (num_rois, 2)) * (image - wh)
  boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
  return features, boxes, rng.integers(0, batch, num_rois).astype(np.int32)


def _output_and_vjp(fn, cotangent, *args):
  """Returns `(fn(*args), cotangents of args)`: what a training step computes (the output is used, so XLA cannot
  drop the forward pass; the op is linear in the features and its backward would not need it otherwise)."""
  out, vjp = jax.vjp(fn, *args)
  grads = vjp(cotangent)
  return (out,) + tuple(grads)


def _timed(fn, *args):
  """Returns `(seconds, output)` of one call, waiting for JAX's asynchronous dispatch to finish."""
  start = time.perf_counter()
  out = fn(*args)
  if isinstance(out, (jax.Array, tuple)):
    out = jax.block_until_ready(out)
  return time.perf_counter() - start, out


def race(ours, theirs, repeats):
  """Returns `(best ours, best theirs)` seconds over `repeats` alternating warm runs (theirs may be None)."""
  best_ours = best_theirs = float("inf")
  for _ in range(repeats):
    best_ours = min(best_ours, _timed(ours)[0])
    if theirs is not None:
      best_theirs = min(best_theirs, _timed(theirs)[0])
  return best_ours, (best_theirs if theirs is not None else None)


def report(name, compile_s, ours_s, theirs_s, diff):
  line = f"{name:<28} compile {compile_s:6.2f} s | jaxdet {ours_s * 1e3:8.1f} ms"
  if theirs_s is None:
    print(line + " | no peer")
    return
  print(line + f" | torchvision {theirs_s * 1e3:8.1f} ms | ratio jaxdet/torchvision {ours_s / theirs_s:5.2f}"
        f" | max |diff| {diff:.1e}")


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def main(argv):
  del argv
  cores = len(os.sched_getaffinity(0))
  print(f"machine: {_cpu_name()}, {cores} cores, jax {jax.__version__} ({jax.devices()[0].platform})")
  features, boxes, indices = make_inputs(_SEED.value, num_rois=_NUM_ROIS.value, batch=_BATCH.value,
                                         size=_SIZE.value, channels=_CHANNELS.value, stride=_STRIDE.value)
  out_size, ratio, scale = _OUTPUT.value, _RATIO.value, 1.0 / _STRIDE.value
  cotangent = np.random.default_rng(1).normal(size=(len(boxes), out_size, out_size, features.shape[-1]))
  cotangent = cotangent.astype(np.float32)
  print(f"features {features.shape} (NHWC), {len(boxes)} RoIs of 16-256 px, output {out_size}x{out_size}, "
        f"sampling_ratio {ratio}, spatial_scale 1/{_STRIDE.value}, best of {_REPEATS.value}")

  try:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision.ops as tv  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    torch = tv = None
    print(f"torchvision peer skipped: {e}")
  if torch is not None:
    torch.set_num_threads(cores)
    t_features = torch.from_numpy(features.transpose(0, 3, 1, 2).copy())
    t_leaf = t_features.clone().requires_grad_()
    t_rois = torch.from_numpy(np.concatenate([indices[:, None], boxes], axis=1).astype(np.float32))
    t_cotangent = torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy())
    nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)
    print(f"peer: torch {torch.__version__}, torchvision CPU kernels, {torch.get_num_threads()} threads")

  f, b, i, g = (jnp.asarray(a) for a in (features, boxes, indices, cotangent))
  align = jax.jit(lambda f, b, i: roi_align(f, b, i, output_size=out_size, spatial_scale=scale,
                                            sampling_ratio=ratio, aligned=True))
  align_grad = jax.jit(lambda f, b, i, g: _output_and_vjp(lambda f: roi_align(
      f, b, i, output_size=out_size, spatial_scale=scale, sampling_ratio=ratio, aligned=True), g, f))
  pool = jax.jit(lambda f, b, i: roi_pool(f, b, i, output_size=out_size, spatial_scale=scale))
  precise = jax.jit(lambda f, b, i: prroi_pool(f, b, i, output_size=out_size, spatial_scale=scale))
  precise_grad = jax.jit(lambda f, b, i, g: _output_and_vjp(lambda f, b: prroi_pool(
      f, b, i, output_size=out_size, spatial_scale=scale), g, f, b))

  def peer_align():
    return tv.roi_align(t_features, t_rois, out_size, scale, ratio, True)

  def peer_align_grad():
    t_leaf.grad = None
    out = tv.roi_align(t_leaf, t_rois, out_size, scale, ratio, True)
    out.backward(t_cotangent)
    return out, t_leaf.grad

  def peer_pool():
    return tv.roi_pool(t_features, t_rois, out_size, scale)

  cases = [  # name, jaxdet fn, its args, peer fn, how to compare, tolerance
      ("roi_align forward", align, (f, b, i), peer_align, lambda o, p: o - nhwc(p), 1e-4),
      ("roi_align forward+backward", align_grad, (f, b, i, g), peer_align_grad,
       lambda o, p: np.concatenate([(o[0] - nhwc(p[0])).ravel(), (o[1] - nhwc(p[1])).ravel()]), 1e-3),
      ("roi_pool forward", pool, (f, b, i), peer_pool, lambda o, p: o - nhwc(p), 0.0),
      ("prroi_pool forward", precise, (f, b, i), None, None, None),
      ("prroi_pool forward+backward", precise_grad, (f, b, i, g), None, None, None),
  ]
  for name, ours, args, peer, compare, tolerance in cases:
    compile_s, out = _timed(ours, *args)
    diff = None
    if peer is not None and torch is not None:
      out = tuple(np.asarray(o) for o in out) if isinstance(out, tuple) else np.asarray(out)
      diff = float(np.max(np.abs(compare(out, peer()))))
      if diff > tolerance:
        raise SystemExit(f"{name}: jaxdet and torchvision disagree (max |diff| {diff:.2e} > {tolerance})")
    else:
      peer = None
    ours_s, theirs_s = race(lambda: ours(*args), peer, _REPEATS.value)
    report(name, compile_s, ours_s, theirs_s, diff)


if __name__ == "__main__":
  app.run(main)
