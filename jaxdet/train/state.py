"""The train state and the pure train / predict steps every detector shares."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdet.models.detector import Detections, Detector, apply_detector, init_detector


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue: a pytree, checkpointed as a whole.

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: Flax parameters (float32, also under bfloat16 compute).
    batch_stats: batch-norm running statistics.
    opt_state: optax state.
    key: raw uint32 `[2]` PRNG key; the step's randomness is `fold_in(key, step)`, so a resumed run draws the same.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array

  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(detector: Detector, tx: optax.GradientTransformation, *, image_shape: tuple[int, int],
                       seed: int) -> TrainState:
  """Returns a freshly initialised state for images of `image_shape` (h, w) (any size works afterwards)."""
  init_key, state_key = jax.random.split(jax.random.PRNGKey(seed))
  variables = jax.jit(lambda k: init_detector(detector, k, image_shape=image_shape))(init_key)
  params = variables["params"]
  return TrainState(step=jnp.int32(0), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), key=state_key)


_ALTER_STREAM = 0x5A7  # seeds the host's draw of the steps `alter_batch` applies to, apart from other streams


def alters_step(detector: Detector, seed: int, step: int) -> bool:
  """Returns whether training step `step` (1-based) of a run seeded `seed` applies `detector.alter_batch`: always
  when `alter_prob` is 1, never without `alter_batch`, else a draw with probability `alter_prob` that depends on
  `(seed, step)` alone, so a resumed run and every host of a multi-host run draw the same."""
  if detector.alter_batch is None:
    return False
  if detector.alter_prob >= 1.0:
    return True
  return bool(np.random.default_rng((_ALTER_STREAM, seed, step)).random() < detector.alter_prob)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, detector: Detector,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               alter: bool = True) -> tuple[TrainState, dict[str, jax.Array]]:
  """Returns the state after one optimizer step on `batch`, and the step's metrics (loss terms, lr, grad norm,
  and `finite`: whether the loss, the gradient and the new parameters are all finite).

  Targets are assigned on device from the padded ground truth and given to the module too (two-stage detectors
  sample RoIs from them inside the forward pass); `batch["image"]` is `[B, H, W, 3]` uint8. The step's randomness
  (rng streams `dropout` and `sampling`) derives from `fold_in(state.key, state.step)`. A detector's `alter_batch`
  (when it has one and `alter`, a static choice: `alters_step` draws it per step) replaces the batch with the
  current variables before the forward pass (self-adversarial training); the loss is then that of the altered batch.
  """
  targets = detector.assign(batch)
  step_key = jax.random.fold_in(state.key, state.step)
  rngs = {"dropout": step_key, "sampling": jax.random.fold_in(step_key, 1)}
  if alter and detector.alter_batch is not None:
    batch = detector.alter_batch(state.variables(), batch, targets, rngs)

  def loss_fn(params):
    outputs, updates = apply_detector(detector, {"params": params, "batch_stats": state.batch_stats}, batch,
                                      train=True, targets=targets, rngs=rngs, mutable=["batch_stats"])
    loss, metrics = detector.loss(outputs, targets)
    return loss, (metrics, updates["batch_stats"])

  (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  finite &= jnp.all(jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))
  metrics = dict(metrics, learning_rate=schedule(state.step), grad_norm=grad_norm, finite=finite)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  return new_state, metrics


def predict_step(variables: dict[str, Any], batch: dict[str, jax.Array], *, detector: Detector,
                 flip_test: bool = False) -> Detections:
  """Returns fixed-size `Detections` for `batch["image"] [B, H, W, 3]` (and the detector's `inputs` fields),
  boxes in input pixels clipped to the image.

  With `flip_test`, the detector's `merge_flipped` combines the outputs of the images and of their mirrors.
  """
  outputs = apply_detector(detector, variables, batch, train=False)
  images = batch["image"]
  if flip_test:
    if detector.merge_flipped is None:
      raise ValueError("flip_test is on but this detector defines no merge_flipped")
    if detector.inputs:
      raise ValueError(f"flip_test would need mirrored {sorted(detector.inputs)} as well; not supported")
    flipped = apply_detector(detector, variables, {"image": images[:, :, ::-1, :]}, train=False)
    outputs = detector.merge_flipped(outputs, flipped)
  return detector.postprocess(outputs, image_shape=images.shape[1:3])
