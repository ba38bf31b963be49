"""The `Detector` contract as the trainer and predictor use it: targets reach the module in training only, the
`inputs` fields reach it in training and inference, the `sampling` rng stream exists, missing fields are named,
the optional `alter_batch` hook replaces the batch a step trains on, on the steps `alters_step` draws."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdet.models.detector import Detections, Detector, apply_detector, init_detector
from jaxdet.train.state import alters_step, create_train_state, predict_step, train_step

NUM_PROPOSALS = 3


class EchoModule(nn.Module):
  """Scores its external proposals with one parameter; in training also returns what it saw of targets and rng."""

  @nn.compact
  def __call__(self, images, *, train, proposals, targets=None):
    w = self.param("w", nn.initializers.ones, ())
    out = {"scores": w * jnp.sum(proposals, axis=-1), "proposals": proposals}
    if train:
      out["seen_target"] = targets["count"]
      out["noise"] = jax.random.uniform(self.make_rng("sampling"), ())
    return out


def echo_detector():
  def loss(outputs, targets):
    value = jnp.mean((outputs["scores"] - targets["count"][:, None]) ** 2)
    return value, {"loss": value, "seen_target": jnp.mean(outputs["seen_target"]), "noise": outputs["noise"]}

  def postprocess(outputs, image_shape=None):
    b = outputs["scores"].shape[0]
    return Detections(boxes=outputs["proposals"], scores=outputs["scores"],
                      classes=jnp.zeros((b, NUM_PROPOSALS), jnp.int32), valid=jnp.ones((b, NUM_PROPOSALS), bool))

  return Detector(module=EchoModule(), assign=lambda batch: {"count": jnp.sum(batch["valid"], axis=1) * 1.0},
                  loss=loss, postprocess=postprocess, num_classes=1,
                  inputs={"proposals": jax.ShapeDtypeStruct((NUM_PROPOSALS, 4), jnp.float32)})


def batch(b=2):
  return {"image": jnp.zeros((b, 8, 8, 3), jnp.uint8), "boxes": jnp.zeros((b, 2, 4)),
          "labels": jnp.zeros((b, 2), jnp.int32), "valid": jnp.array([[True, False], [True, True]]),
          "crowd": jnp.zeros((b, 2), bool), "proposals": jnp.arange(b * NUM_PROPOSALS * 4.0).reshape(b, -1, 4)}


def test_init_traces_zero_inputs_of_the_declared_shape():
  variables = init_detector(echo_detector(), jax.random.PRNGKey(0), image_shape=(8, 8))
  assert variables["params"]["w"].shape == ()


def test_train_step_gives_the_module_targets_and_a_sampling_stream():
  detector = echo_detector()
  tx = optax.sgd(0.0)
  state = create_train_state(detector, tx, image_shape=(8, 8), seed=0)
  _, metrics = train_step(state, batch(), detector=detector, tx=tx, schedule=lambda s: 0.0)
  assert float(metrics["seen_target"]) == 1.5  # mean of the two images' ground-truth counts, 1 and 2
  state2 = state.replace(step=state.step + 1)
  _, metrics2 = train_step(state2, batch(), detector=detector, tx=tx, schedule=lambda s: 0.0)
  assert float(metrics["noise"]) != float(metrics2["noise"])  # a fresh draw every step


def test_predict_step_passes_the_inputs_and_no_targets():
  detector = echo_detector()
  variables = init_detector(detector, jax.random.PRNGKey(0), image_shape=(8, 8))
  b = batch()
  dets = predict_step(variables, {"image": b["image"], "proposals": b["proposals"]}, detector=detector)
  np.testing.assert_array_equal(dets.boxes, b["proposals"])
  np.testing.assert_allclose(dets.scores, np.asarray(b["proposals"]).sum(-1))
  with pytest.raises(ValueError, match="flip_test"):
    predict_step(variables, {"image": b["image"], "proposals": b["proposals"]}, detector=detector, flip_test=True)


def test_a_missing_input_field_is_named():
  detector = echo_detector()
  variables = init_detector(detector, jax.random.PRNGKey(0), image_shape=(8, 8))
  with pytest.raises(KeyError, match="proposals"):
    apply_detector(detector, variables, {"image": jnp.zeros((1, 8, 8, 3), jnp.uint8)}, train=False)


def test_train_step_trains_on_the_batch_alter_batch_returns():
  """The optional `alter_batch` hook (self-adversarial training) sees the current variables, the batch, the targets
  and the step's rng streams, and the step's loss is that of the batch it returns."""
  seen = {}

  def alter_batch(variables, b, targets, rngs):
    seen.update(w=variables["params"]["w"], count=targets["count"], streams=sorted(rngs))
    return {**b, "proposals": b["proposals"] + 1.0}

  plain = echo_detector()
  altered = dataclasses.replace(plain, alter_batch=alter_batch)
  tx = optax.sgd(0.0)
  state = create_train_state(plain, tx, image_shape=(8, 8), seed=0)
  moved = {**batch(), "proposals": batch()["proposals"] + 1.0}
  _, want = train_step(state, moved, detector=plain, tx=tx, schedule=lambda s: 0.0)
  _, got = train_step(state, batch(), detector=altered, tx=tx, schedule=lambda s: 0.0)
  np.testing.assert_allclose(got["loss"], want["loss"])
  assert float(seen["w"]) == 1.0 and seen["streams"] == ["dropout", "sampling"]
  np.testing.assert_array_equal(seen["count"], [1.0, 2.0])
  # a step the trainer draws without the hook (alter=False) trains on the batch as given
  _, skipped = train_step(state, batch(), detector=altered, tx=tx, schedule=lambda s: 0.0, alter=False)
  _, unaltered = train_step(state, batch(), detector=plain, tx=tx, schedule=lambda s: 0.0)
  np.testing.assert_array_equal(skipped["loss"], unaltered["loss"])
  assert float(skipped["loss"]) != float(got["loss"])


def test_alters_step_draws_alter_prob_of_the_steps_the_same_for_every_ask():
  """`alters_step` (the trainer's per-step choice): a function of (seed, step) alone, so a resumed run and every
  host draw the same; about `alter_prob` of the steps; every step at 1; none without the hook."""
  plain = echo_detector()
  half = dataclasses.replace(plain, alter_batch=lambda variables, b, targets, rngs: b, alter_prob=0.5)
  draws = np.array([alters_step(half, 0, step) for step in range(1, 401)])
  assert 160 <= draws.sum() <= 240, draws.sum()  # Binomial(400, 0.5): outside this with probability < 1e-4
  assert list(draws[:50]) == [alters_step(half, 0, step) for step in range(1, 51)]
  assert list(draws[:50]) != [alters_step(half, 1, step) for step in range(1, 51)]
  assert all(alters_step(dataclasses.replace(half, alter_prob=1.0), 0, step) for step in range(1, 50))
  assert not any(alters_step(plain, 0, step) for step in range(1, 50))
