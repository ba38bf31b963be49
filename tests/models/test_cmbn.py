"""CmBN (YOLOv4's cross mini-batch normalization): outputs and running statistics against a NumPy transcription of
the accumulation over k mini-batches, the gradient's flow (earlier mini-batches' statistics are constants), k = 1
equal to flax's batch norm, inference with the running averages, and the plumbing through darknet's layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from jaxdet.models.backbones.darknet import ConvBNLeaky
from jaxdet.models.cmbn import CrossMiniBatchNorm


def cmbn_np(x, k, scale, bias, eps=1e-5):
  """CmBN in float64, mini-batch by mini-batch as darknet runs the subdivisions: mini-batch t is normalised with
  the mean and (biased) variance of the union of mini-batches 1..t, accumulated from their running sums."""
  x = np.asarray(x, np.float64)
  b, c = x.shape[0], x.shape[-1]
  parts = np.split(x, k)
  out, total, total_sq, count = [], np.zeros(c), np.zeros(c), 0
  for part in parts:
    values = part.reshape(-1, c)
    total += values.sum(0)
    total_sq += (values ** 2).sum(0)
    count += len(values)
    mean = total / count
    var = total_sq / count - mean ** 2
    out.append((part - mean) / np.sqrt(var + eps) * scale + bias)
  assert count == x.size // c and b % k == 0
  return np.concatenate(out), mean, var


@pytest.mark.parametrize("k", [1, 2, 4])
def test_outputs_and_running_statistics_match_the_transcription(k):
  rng = np.random.default_rng(k)
  x = (rng.normal(size=(8, 5, 3, 6)) * rng.uniform(0.5, 3, 6) + rng.normal(0, 2, 6)).astype(np.float32)
  module = CrossMiniBatchNorm(k)
  variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
  scale, bias = rng.uniform(0.5, 2, 6).astype(np.float32), rng.normal(size=6).astype(np.float32)
  variables = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
               "batch_stats": variables["batch_stats"]}
  y, updates = module.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
  want, mean, var = cmbn_np(x, k, scale, bias)
  np.testing.assert_allclose(np.asarray(y), want, rtol=2e-4, atol=2e-4)
  # the running averages move (momentum 0.9) towards the statistics of all k mini-batches: the whole batch's
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-4)
  np.testing.assert_allclose(mean, x.reshape(-1, 6).mean(0), rtol=1e-4, atol=1e-5)
  if k > 1:  # not plain batch norm: the first mini-batch sees only its own statistics
    whole = (x - x.reshape(-1, 6).mean(0)) / np.sqrt(x.reshape(-1, 6).var(0) + 1e-5) * scale + bias
    assert not np.allclose(np.asarray(y)[:8 // k], whole[:8 // k], atol=1e-2)
    np.testing.assert_allclose(np.asarray(y)[-(8 // k):], whole[-(8 // k):], rtol=2e-4, atol=2e-4)


def test_one_minibatch_is_flax_batch_norm_and_inference_uses_the_running_averages():
  x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, size=(6, 4, 4, 5)), jnp.float32)
  ours, theirs = CrossMiniBatchNorm(1, momentum=0.9), nn.BatchNorm(use_running_average=False, momentum=0.9)
  v1, v2 = ours.init(jax.random.PRNGKey(0), x), theirs.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, v1) == jax.tree.map(jnp.shape, v2)  # the same variables: checkpoints move
  (y1, s1), (y2, s2) = ours.apply(v1, x, mutable=["batch_stats"]), theirs.apply(v2, x, mutable=["batch_stats"])
  np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(s1["batch_stats"]["var"], s2["batch_stats"]["var"], rtol=1e-5)
  stats = {"mean": jnp.arange(5.0), "var": jnp.full((5,), 4.0)}
  y = CrossMiniBatchNorm(3, use_running_average=True).apply({"params": v1["params"], "batch_stats": stats}, x)
  np.testing.assert_allclose(y, (x - jnp.arange(5.0)) / jnp.sqrt(4.0 + 1e-5), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="multiple"):
    CrossMiniBatchNorm(4).init(jax.random.PRNGKey(0), x)


def test_earlier_minibatches_statistics_carry_no_gradient():
  """d(output of mini-batch t) / d(input of mini-batch s) is zero for s > t (later ones are not seen) and, through
  the statistics, for s < t (constants, as in darknet, whose earlier subdivisions are already back-propagated)."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3, 2)), jnp.float32)
  module = CrossMiniBatchNorm(3)
  variables = module.init(jax.random.PRNGKey(0), x)

  def out(part, x):
    y, _ = module.apply(variables, x, mutable=["batch_stats"])
    return jnp.sum(y[2 * part:2 * part + 2] * jnp.arange(1.0, 3.0)[:, None, None])

  for t in range(3):
    g = np.asarray(jax.grad(out, argnums=1)(t, x))
    for s in range(3):
      block = g[2 * s:2 * s + 2]
      assert (np.abs(block).max() > 1e-4) == (s == t), (t, s)


def test_darknet_layers_take_cmbn_with_batch_norms_variables():
  x = jnp.ones((4, 6, 6, 3))
  plain = ConvBNLeaky(8).init(jax.random.PRNGKey(0), x, train=False)
  cross = ConvBNLeaky(8, cmbn=2).init(jax.random.PRNGKey(0), x, train=False)
  assert jax.tree.map(jnp.shape, plain) == jax.tree.map(jnp.shape, cross)
  y, _ = ConvBNLeaky(8, cmbn=2).apply(cross, x + jnp.arange(4.0)[:, None, None, None], train=True,
                                      mutable=["batch_stats"])
  assert y.shape == (4, 6, 6, 8) and bool(jnp.all(jnp.isfinite(y)))
