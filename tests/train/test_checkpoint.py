"""Checkpoints: the state and the loader position round-trip; the newest K plus the best by AP are kept."""

import jax
import optax
import pytest
import numpy as np

from jaxdet.data.loader import make_loader
from jaxdet.data.source import ListSource, make_example
from jaxdet.train.checkpoint import Checkpointer
from jaxdet.train.optim import make_optimizer
from jaxdet.train.state import create_train_state
from tests.train.conftest import optim_config, tiny_detector


def small_source(n=12):
  rng = np.random.default_rng(0)
  examples = [make_example(rng.integers(0, 255, (32, 32, 3)), [[2, 2, 20, 20]], [i % 2], image_id=i + 1)
              for i in range(n)]
  return ListSource(examples, ["a", "b"])


def test_state_and_loader_round_trip(tmp_path):
  detector = tiny_detector()
  tx, _ = make_optimizer(optim_config(), total_steps=10)
  state = create_train_state(detector, tx, image_shape=(32, 32), seed=3)
  state = state.replace(step=state.step + 7)
  loader = iter(make_loader(small_source(), batch_size=2, image_size=32, train=True, max_boxes=4, seed=5,
                            shard_index=0, shard_count=1))
  for _ in range(3):
    next(loader)
  ckpt = Checkpointer(tmp_path, keep_last=2)
  ckpt.save(7, state, loader=loader)
  # The loader moves on and the state is replaced while the save may still be writing in the background:
  # what is restored must be what was saved at step 7.
  expected = [next(loader)["image_id"] for _ in range(4)]
  state = state.replace(step=state.step + 100)
  ckpt.wait()

  template = create_train_state(detector, tx, image_shape=(32, 32), seed=99)
  fresh = iter(make_loader(small_source(), batch_size=2, image_size=32, train=True, max_boxes=4, seed=5,
                           shard_index=0, shard_count=1))
  restored = Checkpointer(tmp_path, keep_last=2).restore(7, template, loader=fresh)
  assert int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(state.replace(step=state.step - 100)), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal([next(fresh)["image_id"] for _ in range(4)], expected)


def test_keeps_the_newest_and_the_best_by_ap(tmp_path):
  ckpt = Checkpointer(tmp_path, keep_last=2, async_save=False)
  state = {"w": np.zeros(3, np.float32)}
  aps = {100: None, 200: 0.31, 300: None, 400: 0.52, 500: 0.40, 600: None, 700: None}
  for step, ap in aps.items():
    ckpt.save(step, {"w": np.full(3, step, np.float32)}, metrics=None if ap is None else {"AP": ap})
  ckpt.wait()
  assert ckpt.all_steps() == [400, 600, 700]
  assert ckpt.best_step() == 400 and ckpt.latest_step() == 700
  reopened = Checkpointer(tmp_path, keep_last=2)
  assert reopened.best_step() == 400
  np.testing.assert_array_equal(reopened.restore(400, state)["w"], 400)


def test_best_step_is_none_without_evaluations(tmp_path):
  ckpt = Checkpointer(tmp_path, keep_last=3, async_save=False)
  ckpt.save(1, {"w": np.zeros(2)})
  assert ckpt.best_step() is None and ckpt.latest_step() == 1


def test_model_variables_restore_without_the_optimiser(tmp_path):
  detector = tiny_detector()
  adam, _ = make_optimizer(optim_config(), total_steps=10)
  state = create_train_state(detector, adam, image_shape=(32, 32), seed=3)
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(5, state)
  # A template from another seed and no optimiser state at all: only params and batch_stats are read.
  other = create_train_state(detector, optax.identity(), image_shape=(32, 32), seed=8)
  restored = Checkpointer(tmp_path).restore_subtree(5, {"params": other.params, "batch_stats": other.batch_stats})
  assert set(restored) == {"params", "batch_stats"}
  for a, b in zip(jax.tree.leaves(state.variables()), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  bad = jax.tree.map(lambda x: np.zeros((*x.shape, 2), x.dtype), other.params)
  with pytest.raises(ValueError):
    Checkpointer(tmp_path).restore_subtree(5, {"params": bad})
