"""The train step: it learns, it compiles once per input shape, and it gives the same losses on 1 and 8 devices."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdet.train.optim import make_optimizer
from jaxdet.train.state import create_train_state, predict_step, train_step
from tests.train.conftest import optim_config, painted_batch, tiny_detector


def train_on(detector, batch, steps):
  """Returns the state after `steps` jitted train steps on `batch`, and the loss of each step."""
  tx, schedule = make_optimizer(optim_config(), total_steps=steps)
  state = create_train_state(detector, tx, image_shape=(64, 64), seed=0)
  step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=schedule))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return state, losses


def test_loss_decreases_on_a_tiny_batch():
  detector, batch = tiny_detector(), painted_batch()
  state, losses = train_on(detector, batch, 40)
  assert int(state.step) == 40
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.5 * losses[0], losses
  dets = predict_step(state.variables(), {"image": batch["image"]}, detector=detector)
  assert dets.boxes.shape == (8, 100, 4) and bool(dets.valid.any())


def test_bfloat16_compute_keeps_float32_parameters_and_learns():
  detector, batch = tiny_detector(dtype="bfloat16"), painted_batch()
  state, losses = train_on(detector, batch, 20)
  assert {p.dtype for p in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  assert np.all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.7 * losses[0], losses
  outputs = detector.module.apply(state.variables(), batch["image"])
  assert {o.dtype for o in jax.tree.leaves(outputs)} == {np.dtype(np.float32)}
  assert predict_step(state.variables(), {"image": batch["image"]}, detector=detector).boxes.dtype == np.float32
  with pytest.raises(ValueError, match="int8"):
    tiny_detector(dtype="int8")


def test_jit_compiles_once_per_input_shape():
  detector = tiny_detector()
  tx, schedule = make_optimizer(optim_config(), total_steps=10)
  traces = []

  def counted(state, batch):
    traces.append(batch["image"].shape)
    return train_step(state, batch, detector=detector, tx=tx, schedule=schedule)

  step = jax.jit(counted)
  state = create_train_state(detector, tx, image_shape=(64, 64), seed=0)
  for size in (64, 64, 96, 64, 96, 64):
    state, _ = step(state, painted_batch(size=size, batch=2))
  assert traces == [(2, 64, 64, 3), (2, 96, 96, 3)]


def test_same_losses_on_one_and_eight_devices():
  """Runs tests/train/device_equality.py in a fresh process with 8 virtual CPU devices."""
  script = os.path.join(os.path.dirname(__file__), "device_equality.py")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, script], env=env, cwd=root, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "devices 1 vs 8: equal" in result.stdout, result.stdout
