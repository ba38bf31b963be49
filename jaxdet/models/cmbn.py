"""Cross mini-Batch Normalization (CmBN; Bochkovskiy et al. 2020, "YOLOv4", sec. 3.3 and Figure 4).

Darknet trains with `batch` images per weight update cut into `subdivisions` mini-batches, each run forward and
backward in turn while the weights stay fixed. Plain batch norm normalises each mini-batch with its own statistics.
CBN (Yao et al. 2020, cross-iteration BN) pools statistics over past iterations and needs a Taylor correction
because the weights changed in between; CmBN pools them only over the mini-batches of one batch, where the weights
have not changed, so no correction is needed: mini-batch t is normalised with the statistics accumulated over
mini-batches 1..t of the current batch.

What `CrossMiniBatchNorm` computes, exactly, in training (`use_running_average=False`) for `x [B, ..., C]` and
k = `minibatches` (B divisible by k):
1. Split the batch, in order, into k mini-batches x_1..x_k of B / k images (in darknet's sequence: mini-batch t is
   the t-th subdivision of the step's images).
2. Per mini-batch s and channel, the moments over its images and positions: m_s = E[x_s], q_s = E[x_s^2].
3. For mini-batch t, the accumulated statistics of mini-batches 1..t, the moments of their union (all of equal
   size): mu_t = (1/t) sum_{s<=t} m_s, sigma^2_t = (1/t) sum_{s<=t} q_s - mu_t^2 (biased, as flax's and
   darknet's batch norm), floored at 0.
4. y_t = scale (x_t - mu_t) / sqrt(sigma^2_t + epsilon) + bias.
5. The running averages that inference uses move towards mu_k, sigma^2_k (the statistics of all k mini-batches,
   i.e. of the whole batch) with `momentum`, once per step.
Gradients: the moments m_s, q_s of the earlier mini-batches s < t enter mini-batch t's statistics as constants
(`stop_gradient`), since in the paper's schedule they were computed by earlier forward passes whose backward pass
is already done; each mini-batch's own moments carry its gradient (weighted 1/t, as they enter mu_t). Mini-batch
1 is therefore plain batch norm over B / k images, and mini-batch k sees whole-batch statistics.
With k = 1 this is batch norm over the whole batch (`nn.BatchNorm`, which `batch_norm` returns then).
Inference (`use_running_average=True`) is batch norm's.

Deliberate differences: darknet's CmBN averages the per-mini-batch variances, not the pooled second moments, so
it leaves out the spread of the mini-batch means; the union's variance is what "statistics accumulated over k
mini-batches" means here. Darknet runs the mini-batches one after another; here the whole step's batch goes through
the network at once, which computes the same numbers (the weights are the same for all k).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class CrossMiniBatchNorm(nn.Module):
  """Returns `x [B, ..., C]` normalised per channel with statistics accumulated over `minibatches` mini-batches
  (module docstring), then scaled and shifted. Variables are `nn.BatchNorm`'s (params `scale`, `bias`;
  batch_stats `mean`, `var`), so checkpoints move between the two."""

  minibatches: int = 1
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
      return ((x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias).astype(self.dtype)

    k, b = self.minibatches, x.shape[0]
    if k < 1 or b % k:
      raise ValueError(f"CmBN splits the batch of {b} into {k} mini-batches: the batch size must be a multiple")
    xs = x.astype(jnp.float32).reshape(k, b // k, *x.shape[1:])
    axes = tuple(range(1, xs.ndim - 1))
    first = jnp.mean(xs, axis=axes)  # [k, C]
    second = jnp.mean(jnp.square(xs), axis=axes)
    count = jnp.arange(1, k + 1, dtype=jnp.float32)[:, None]

    def accumulated(moment):  # (sum over s < t of constant moments + own moment) / t
      held = jax.lax.stop_gradient(moment)
      return (jnp.cumsum(held, axis=0) - held + moment) / count

    mean = accumulated(first)
    var = jnp.maximum(accumulated(second) - jnp.square(mean), 0.0)
    shape = (k,) + (1,) * (xs.ndim - 2) + (c,)
    y = (xs - mean.reshape(shape)) * (jax.lax.rsqrt(var + self.epsilon).reshape(shape) * scale) + bias
    if not self.is_initializing():
      running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * jax.lax.stop_gradient(mean[-1])
      running_var.value = self.momentum * running_var.value + (1 - self.momentum) * jax.lax.stop_gradient(var[-1])
    return y.reshape(x.shape).astype(self.dtype)


def batch_norm(minibatches: int, *, train: bool, dtype: Any = jnp.float32, name: str = "bn") -> nn.Module:
  """Returns the batch norm of darknet's layers (momentum 0.9, epsilon 1e-5): `nn.BatchNorm` for `minibatches` 1,
  `CrossMiniBatchNorm` (CmBN) over that many mini-batches otherwise."""
  if minibatches <= 1:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)
  return CrossMiniBatchNorm(minibatches, use_running_average=not train, dtype=dtype, name=name)
