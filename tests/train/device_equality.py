"""Trains the tiny CenterNet a few steps on a 1-device and on an 8-device mesh and compares losses and params.

Run by tests/train/test_train_step.py with XLA_FLAGS=--xla_force_host_platform_device_count=8. The same global
batch goes through the same jitted step; only the mesh differs, so the results must agree to float tolerance
(reductions may be ordered differently across devices).
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxdet.train.optim import make_optimizer  # noqa: E402
from jaxdet.train.parallel import make_mesh, replicate, replicated, shard_batch  # noqa: E402
from jaxdet.train.state import create_train_state, train_step  # noqa: E402
from tests.train.conftest import optim_config, painted_batch, tiny_detector  # noqa: E402


def run(devices, steps=4):
  detector = tiny_detector()
  tx, schedule = make_optimizer(optim_config(), total_steps=steps)
  mesh = make_mesh(devices)
  state = replicate(create_train_state(detector, tx, image_shape=(64, 64), seed=0), mesh)
  step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=schedule),
                 out_shardings=(replicated(mesh), replicated(mesh)))
  losses = []
  for i in range(steps):
    batch = jax.tree.map(np.asarray, painted_batch(seed=i, batch=16))
    state, metrics = step(state, shard_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, state.batch_stats)


def main():
  assert jax.device_count() == 8, jax.devices()
  one = run(jax.devices()[:1])
  eight = run(jax.devices())
  print("losses 1 device: ", one[0])
  print("losses 8 devices:", eight[0])
  np.testing.assert_allclose(one[0], eight[0], rtol=2e-5)
  # Adam divides each gradient by its own running RMS, so a parameter whose gradient is near zero moves by up to
  # the learning rate (3e-3) whatever the gradient's rounding: summation order across devices then shows as
  # differences of ~1e-5 in a few such parameters (seen on an AMD EPYC). 1e-4 is 1% of 4 steps' largest move;
  # a real difference (per-device batch statistics, a lost all-reduce) moves parameters by far more.
  for a, b in zip(jax.tree.leaves(one[1:]), jax.tree.leaves(eight[1:])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  print("devices 1 vs 8: equal")


if __name__ == "__main__":
  main()
