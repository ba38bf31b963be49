"""The contract every jaxdet detector keeps: a Flax module plus three pure functions.

The trainer, evaluator and predictor only ever see a `Detector` and call its module through `apply_detector`;
a new detector is a new file in `jaxdet/models/detectors/` that builds one.

The contract grew for two-stage detectors (Faster R-CNN; R-CNN / Fast R-CNN on external proposals; IoU-Net and
KL-loss heads). A two-stage detector samples RoIs from its own proposals and the ground truth *inside* the training
forward pass, so the module cannot be a function of the images alone, and its loss reads targets (the sampled
RoIs' classes and regression targets) that only exist after the forward pass. Two changes allow that while the
trainer stays the same for every detector:
- in training the module also receives `targets` (what `assign(batch)` returned) and a `sampling` random stream,
  and may return, among its outputs, targets it built on the way (a detector's `loss` reads them from `outputs`);
- `inputs` names batch fields besides the image that the module reads in training and inference (e.g. the
  per-image external proposals of Fast R-CNN), so the loaders carry them and every caller passes them.
Single-stage detectors (CenterNet) ignore `targets` and declare no `inputs`: their behaviour is unchanged.

It grew again for YOLOv4's Self-Adversarial Training, whose training step first lets the network alter its own
input images (with the current weights) and then trains on the altered ones: an optional `alter_batch` hook that
the trainer calls, for every detector that defines one, between `assign` and the training forward pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class Detections:
  """Fixed-size detections for a batch of images.

  Attributes:
    boxes: `[B, K, 4]` float32 xyxy pixels in the network-input frame.
    scores: `[B, K]` float32 confidence in [0, 1].
    classes: `[B, K]` int32 contiguous class index in `[0, num_classes)`.
    valid: `[B, K]` bool, which of the K slots hold a real detection.
  """

  boxes: jax.Array
  scores: jax.Array
  classes: jax.Array
  valid: jax.Array


@dataclasses.dataclass(frozen=True)
class Detector:
  """A detector: `module` plus its target assignment, loss and post-processing.

  Attributes:
    module: Flax module called as `module.apply(variables, images, train=..., targets=..., **inputs)`
      (see `apply_detector`) for images `[B, H, W, 3]`; returns the raw outputs (a pytree of arrays). `targets`
      is what `assign` returned, given in training only (None otherwise); modules that do not sample inside the
      forward pass ignore it. Randomness in training comes from the `dropout` and `sampling` rng streams.
    assign: `assign(batch) -> targets`, a pure jittable function of the padded ground truth in
      `batch` (`boxes [B, M, 4]`, `labels [B, M]`, `valid [B, M]`, `crowd [B, M]`, `image [B, H, W, 3]`, and the
      fields named in `inputs`).
    loss: `loss(outputs, targets) -> (scalar, metrics)` where metrics is a dict of scalars.
    postprocess: `postprocess(outputs, image_shape=None) -> Detections` with a fixed number of slots per image;
      boxes are clipped to `image_shape` (h, w) when given.
    num_classes: number of foreground classes.
    merge_flipped: optional `merge_flipped(outputs, flipped_outputs) -> outputs` for flip testing: combines the
      outputs of the images and of their horizontal mirrors into outputs `postprocess` reads.
    inputs: per-image batch fields besides `image` that the module reads as keyword arguments, in training and
      inference, by name with the shape and dtype of one image's field (e.g. Fast R-CNN's external proposals:
      `{"proposals": ShapeDtypeStruct((P, 4), float32), "proposal_valid": ShapeDtypeStruct((P,), bool)}`).
    alter_batch: optional, training only: `alter_batch(variables, batch, targets, rngs) -> batch`, the batch the
      step trains on, computed from the current variables before the training forward pass (same fields and
      shapes; the image may become float32 pixels in [0, 255]). No gradient flows through it into the update.
      YOLOv4's self-adversarial training (`jaxdet.models.self_adversarial`) attacks the images here.
    alter_prob: the fraction of training steps `alter_batch` applies to (1: every step). The trainer draws each
      step's choice on the host from the seed and the step (`jaxdet.train.state.alters_step`) and runs the step
      compiled without `alter_batch` on the others.
  """

  module: nn.Module
  assign: Callable[[Batch], Any]
  loss: Callable[[Any, Any], tuple[jax.Array, dict[str, jax.Array]]]
  postprocess: Callable[..., Detections]
  num_classes: int
  merge_flipped: Callable[[Any, Any], Any] | None = None
  inputs: Mapping[str, jax.ShapeDtypeStruct] = dataclasses.field(default_factory=dict)
  alter_batch: Callable[..., Batch] | None = None
  alter_prob: float = 1.0


def apply_detector(detector: Detector, variables: Mapping[str, Any], batch: Batch, *, train: bool,
                   targets: Any = None, rngs: Mapping[str, jax.Array] | None = None,
                   mutable: Any = False) -> Any:
  """Returns the module's outputs on `batch` (and the updated collections when `mutable`), as `module.apply`.

  `batch` holds `image [B, H, W, 3]` and the fields named in `detector.inputs`; `targets` (from `assign`) is
  passed in training only.
  """
  missing = [name for name in ("image", *detector.inputs) if name not in batch]
  if missing:
    raise KeyError(f"the detector reads batch fields {missing}, which the batch does not have "
                   f"(it has {sorted(batch)})")
  kwargs = {name: batch[name] for name in detector.inputs}
  if train:
    kwargs["targets"] = targets
  return detector.module.apply(variables, batch["image"], train=train, rngs=rngs, mutable=mutable, **kwargs)


def init_detector(detector: Detector, key: jax.Array, *, image_shape: tuple[int, int]) -> dict[str, Any]:
  """Returns the module's initial variables, traced in inference mode on one zero image of `image_shape` (h, w)
  and zero `inputs` (the variables do not depend on the mode or the values)."""
  kwargs = {name: jnp.zeros((1, *spec.shape), spec.dtype) for name, spec in detector.inputs.items()}
  return detector.module.init(key, jnp.zeros((1, *image_shape, 3), jnp.uint8), train=False, **kwargs)
