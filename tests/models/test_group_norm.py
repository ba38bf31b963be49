"""GroupNorm by matrix products: equal to Flax's GroupNorm in values and gradients, finite on constant input."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.group_norm import GroupNorm


@pytest.mark.parametrize("shape,groups", [((2, 8, 8, 32), 8), ((3, 5, 7, 16), 16), ((4, 6, 8), 1)])
def test_equals_flax_in_values_and_gradients(shape, groups):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(2.0, 3.0, shape).astype(np.float32))
  ours, theirs = GroupNorm(num_groups=groups), nn.GroupNorm(num_groups=groups, epsilon=1e-5)
  params = {"params": {"scale": jnp.asarray(rng.normal(1, 0.3, shape[-1]), jnp.float32),
                       "bias": jnp.asarray(rng.normal(0, 0.3, shape[-1]), jnp.float32)}}
  chex.assert_trees_all_equal_shapes(ours.init(jax.random.PRNGKey(0), x), theirs.init(jax.random.PRNGKey(0), x))
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=2e-5)
  w = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)) * w), argnums=(0, 1))(params, x)  # noqa: E731
  chex.assert_trees_all_close(grad(ours), grad(theirs), atol=1e-4)


def test_constant_input_and_bfloat16():
  module = GroupNorm(num_groups=4, dtype=jnp.bfloat16)
  x = jnp.full((2, 4, 4, 8), 3.0, jnp.bfloat16)
  params = module.init(jax.random.PRNGKey(0), x)
  y = module.apply(params, x)
  assert y.dtype == jnp.bfloat16 and np.all(np.asarray(y, np.float32) == 0)
  g = jax.grad(lambda x: jnp.sum(module.apply(params, x).astype(jnp.float32)))(x.astype(jnp.float32))
  assert np.all(np.isfinite(g))
  with pytest.raises(ValueError, match="groups do not divide"):
    GroupNorm(num_groups=3).init(jax.random.PRNGKey(0), x)
