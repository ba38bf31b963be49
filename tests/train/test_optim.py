"""Optimisers and schedules built from configs: step drops, warmup, cosine, weight-decay masks, clipping."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdet.train.optim import decay_mask, make_optimizer, make_schedule


def config(**kw):
  base = dict(optimizer="adam", learning_rate=1.0, schedule="constant", warmup_steps=0, weight_decay=0.0,
              grad_clip_norm=0.0, decay_fractions=(0.5, 0.75), decay_factor=0.1)
  return ml_collections.ConfigDict(base | kw)


def test_step_schedule_drops_tenfold_at_the_fractions():
  s = make_schedule(config(schedule="step"), total_steps=100)
  np.testing.assert_allclose([s(0), s(49), s(50), s(74), s(75), s(99)], [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_warmup_is_linear_then_joins_the_schedule():
  s = make_schedule(config(schedule="step", warmup_steps=10), total_steps=100)
  np.testing.assert_allclose([s(0), s(5), s(10), s(49), s(50), s(75)], [0, 0.5, 1, 1, 0.1, 0.01], rtol=1e-6)


def test_cosine_ends_at_the_final_fraction():
  s = make_schedule(config(schedule="cosine", final_fraction=0.0), total_steps=100)
  np.testing.assert_allclose([s(0), s(50), s(100)], [1, 0.5, 0], atol=1e-6)


def test_unknown_names_are_refused():
  with pytest.raises(ValueError, match="schedule"):
    make_schedule(config(schedule="linear"), total_steps=10)
  with pytest.raises(ValueError, match="optimizer"):
    make_optimizer(config(optimizer="lamb"), total_steps=10)
  with pytest.raises(ValueError, match="adamw"):
    make_optimizer(config(optimizer="adam", weight_decay=1e-4), total_steps=10)


def test_weight_decay_skips_biases_and_norm_parameters():
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones(2)}, "bn": {"scale": jnp.ones(2)}}
  assert decay_mask(params) == {"conv": {"kernel": True, "bias": False}, "bn": {"scale": False}}
  tx, _ = make_optimizer(config(optimizer="sgd", momentum=0.0, learning_rate=0.1, weight_decay=0.5), 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  # With zero gradients only decay moves parameters: kernel by -lr * wd * w, the others not at all.
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.05)
  np.testing.assert_allclose(updates["conv"]["bias"], 0.0)
  np.testing.assert_allclose(updates["bn"]["scale"], 0.0)


def test_gradient_clipping_bounds_the_global_norm():
  tx, _ = make_optimizer(config(optimizer="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=1.0), 10)
  params = {"w": jnp.zeros(4)}
  updates, _ = tx.update({"w": jnp.full(4, 10.0)}, tx.init(params), params)
  np.testing.assert_allclose(optax.global_norm(updates), 1.0, rtol=1e-6)


def test_frozen_parameters_stay_bit_identical_and_the_rest_train():
  params = {"backbone": {"conv": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}},
            "head": {"kernel": jnp.ones((3, 2))}}
  tx, _ = make_optimizer(config(optimizer="adamw", weight_decay=0.1, frozen=("backbone/",)), total_steps=10)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  new = params
  for _ in range(3):
    updates, state = tx.update(grads, state, new)
    new = optax.apply_updates(new, updates)
  for a, b in zip(jax.tree.leaves(params["backbone"]), jax.tree.leaves(new["backbone"])):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(new["head"]["kernel"], params["head"]["kernel"])


def test_frozen_pattern_that_matches_nothing_is_an_error():
  tx, _ = make_optimizer(config(frozen=("neck/",)), total_steps=10)
  with pytest.raises(ValueError, match="matches no parameter"):
    tx.init({"backbone": {"kernel": jnp.ones((2, 2))}})
