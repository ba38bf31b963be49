"""Self-Adversarial Training (SAT; Bochkovskiy et al. 2020, "YOLOv4", sec. 3.3): the network attacks its own input.

Each training step runs in two stages:
1. the network, with its current weights and frozen, alters the images to hide the objects: signed gradient
   ascent (FGSM, Goodfellow et al. 2015, iterated `steps` times) of an objective the detector names with respect to
   the pixels, `epsilon` pixels (of 0..255) per step, the result clipped back to the pixel range;
2. the network trains on the altered images with the original labels (the trainer's ordinary step).
Darknet attacks on a random half of the iterations (`rand_int(0, 1)` per iteration, after its warm-up) and trains on
the clean images on the others; a detector sets that fraction as its `Detector.alter_prob`, and the trainer then
draws each step's choice on the host and runs a step compiled without stage 1 on the others (an on-device
`lax.cond` was measured slower: its attack branch ran at about half the speed of the same attack inlined).
YOLO's objective is the objectness cross-entropy of the predictors responsible for the objects: raising it lowers
their objectness, so the altered image is one on which the network no longer sees the objects. (Raising the whole
training loss instead, tried first, spends the step's budget on the background's and the classes' terms as well.)

The attack runs the network as training does, with batch statistics (the updates to the running averages are
discarded). Darknet's attack uses the rolling statistics instead; from scratch those lag far behind the weights in
the first epochs, and the attack would then target a different network from the one being trained.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

PIXEL_MAX = 255.0


def self_adversarial_images(objective: Callable[[jax.Array], jax.Array], images: jax.Array, *, steps: int = 1,
                            epsilon: float = 4.0) -> jax.Array:
  """Returns float32 `[B, H, W, 3]` images in [0, 255]: `images` (uint8 or float pixels) after `steps` steps of
  x <- clip(x + epsilon sign(d objective / d x), 0, 255), stage 1 of SAT (module docstring); no gradient flows
  through the result."""
  if steps < 1 or epsilon <= 0:
    raise ValueError(f"self-adversarial training needs steps >= 1 and epsilon > 0, got {steps} and {epsilon}")
  x = jnp.asarray(images).astype(jnp.float32)
  grad = jax.grad(objective)
  for _ in range(steps):  # a few steps at most: unrolled
    x = jnp.clip(x + epsilon * jnp.sign(grad(x)), 0.0, PIXEL_MAX)
  return jax.lax.stop_gradient(x)


def self_adversarial_batch(module: nn.Module, objective: Callable[[Any, Any], tuple[jax.Array, ...]], *,
                           steps: int = 1,
                           epsilon: float = 4.0) -> Callable[..., dict[str, jax.Array]]:
  """Returns `alter_batch(variables, batch, targets, rngs) -> batch` for the `Detector` contract: the batch with
  its images attacked by the detector's own `module`: ascent on `objective(outputs, targets)[0]` (stage 1 of SAT;
  the module is called as in training, `module.apply(variables, images, train=True, targets=targets)`, batch
  statistics, updates dropped)."""
  if steps < 1 or epsilon <= 0:
    raise ValueError(f"self-adversarial training needs steps >= 1 and epsilon > 0, got {steps} and {epsilon}")

  def alter_batch(variables: Mapping[str, Any], batch: Mapping[str, jax.Array], targets: Any,
                  rngs: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    def attacked(images):
      outputs, _ = module.apply(variables, images, train=True, targets=targets, rngs=rngs, mutable=["batch_stats"])
      return objective(outputs, targets)[0]

    return {**batch, "image": self_adversarial_images(attacked, batch["image"], steps=steps, epsilon=epsilon)}

  return alter_batch
