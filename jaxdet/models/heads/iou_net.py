"""IoU-Net's localisation confidence (Jiang et al. 2018, "Acquisition of Localization Confidence for Accurate Object
Detection"): the IoU branch, its training boxes and loss, and the optimisation-based box refinement (Algorithm 2).

The branch reads Precise-RoI-pooled features of a box (the exact integral, differentiable w.r.t. the box) and
predicts the box's IoU with the object it covers. It is trained on jittered ground truth rather than proposals
(sec. 3.1: boxes with IoU > 0.5, spread uniformly over IoU; `jitter_boxes` says how) with a smooth L1 loss to the
true IoU (`iou_head_loss`). Inference uses it twice: IoU-guided NMS ranks boxes by it (`jaxdet.ops.iou_guided_nms`),
and `refine_boxes` climbs its gradient w.r.t. the box.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.ops.boxes import clip_boxes, is_valid_box
from jaxdet.ops.iou import pairwise_iou
from jaxdet.ops.losses import smooth_l1_loss


def jitter_boxes(gt_boxes: jax.Array, gt_labels: jax.Array, gt_valid: jax.Array, gt_crowd: jax.Array, *,
                 key: jax.Array, num_samples: int = 64, num_candidates: int = 64, low: float = 0.5,
                 max_jitter: float = 0.4, tolerance: float = 0.025) -> dict[str, jax.Array]:
  """Returns one image's IoU-branch training boxes (vmap for a batch), `num_samples` slots:

    boxes `[S, 4]` xyxy pixels; labels int32 `[S]` class index of the ground truth each was jittered from;
    iou `[S]` the training target: the box's IoU with the best-overlapping valid ground truth of that class;
    valid bool `[S]`.

  IoU-Net's augmentation (sec. 3.1: jittered ground truth, IoU > `low`, uniformly distributed over IoU), made
  exact and jittable: each slot draws a non-crowd ground truth uniformly, a target IoU u ~ U(low, 1), and
  `num_candidates` jitters of the ground truth, each side moved by m e x (the box's width or height) with
  m ~ U(0, max_jitter) per jitter and e ~ U(-1, 1) per side (at 0.4 the jitters' IoUs alone are close to flat
  over (0.5, 1], 7-10% in each 0.05 band); the slot keeps the jitter whose IoU is closest to u among those with
  IoU > `low`, and is invalid when none lies within `tolerance` of u (about 0.3% of slots with 64 jitters). The
  kept IoUs are then u plus an error under `tolerance`: uniform over (low, 1] up to that blur. Slots of an image
  without ground truth are invalid.

  Args:
    gt_boxes: `[M, 4]` xyxy; gt_labels: int `[M]` in [0, C); gt_valid, gt_crowd: bool `[M]`.
    key: PRNG key. num_samples: slots S. num_candidates: jitters per slot.
  """
  gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
  gt_labels = jnp.asarray(gt_labels, jnp.int32)
  usable = jnp.asarray(gt_valid, bool) & ~jnp.asarray(gt_crowd, bool) & is_valid_box(gt_boxes)
  k_gt, k_u, k_m, k_e = jax.random.split(key, 4)
  source = jax.random.categorical(k_gt, jnp.where(usable, 0.0, -jnp.inf), shape=(num_samples,))
  source = jnp.where(jnp.any(usable), source, 0)
  target = jax.random.uniform(k_u, (num_samples,), minval=low, maxval=1.0)
  box = gt_boxes[source]
  size = jnp.concatenate([box[:, 2:] - box[:, :2]] * 2, axis=-1)
  magnitude = jax.random.uniform(k_m, (num_samples, num_candidates, 1), maxval=max_jitter)
  sides = jax.random.uniform(k_e, (num_samples, num_candidates, 4), minval=-1.0, maxval=1.0)
  candidates = box[:, None, :] + magnitude * sides * size[:, None, :]  # sides move < 2 x 0.4 of the size: valid
  labels = gt_labels[source]
  same_class = usable[None, :] & (gt_labels[None, :] == labels[:, None])  # [S, M]
  ious = pairwise_iou(candidates.reshape(-1, 4), gt_boxes).reshape(num_samples, num_candidates, -1)
  ious = jnp.max(jnp.where(same_class[:, None, :], ious, 0.0), axis=-1)  # [S, J]
  distance = jnp.where(ious > low, jnp.abs(ious - target[:, None]), jnp.inf)
  best = jnp.argmin(distance, axis=1)
  take = lambda x: jnp.take_along_axis(x, best[:, None], axis=1)[:, 0]  # noqa: E731
  valid = (take(distance) <= tolerance) & jnp.any(usable)
  boxes = jnp.take_along_axis(candidates, best[:, None, None], axis=1)[:, 0]
  return {"boxes": jnp.where(valid[:, None], boxes, 0.0), "labels": jnp.where(valid, labels, 0),
          "iou": jnp.where(valid, take(ious), 0.0), "valid": valid}


class IoUHead(nn.Module):
  """Returns `[R, C]` predicted IoU per class in (0, 1) from Precise-RoI-pooled features `[R, h, w, D]`.

  IoU-Net's IoU predictor: the R-CNN head's shape (two fully connected layers with ReLU) with its own weights and
  one output per class (class-aware: a box's confidence is read for the class it is detected as), squashed by a
  sigmoid into IoU's range (the paper does not say how it bounds the output).
  """

  num_classes: int
  features: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    x = pooled.reshape(pooled.shape[0], -1).astype(self.dtype)
    for name in ("fc6", "fc7"):
      x = nn.relu(nn.Dense(self.features, dtype=self.dtype, name=name)(x))
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype, name="iou")(x)
    return jax.nn.sigmoid(logits.astype(jnp.float32))


def class_iou(predicted: jax.Array, classes: jax.Array) -> jax.Array:
  """Returns `[...]`: each box's predicted IoU `[..., C]` read at its class `[...]`."""
  return jnp.take_along_axis(predicted, jnp.asarray(classes, jnp.int32)[..., None], axis=-1)[..., 0]


def iou_head_loss(predicted: jax.Array, labels: jax.Array, target: jax.Array, valid: jax.Array, *,
                  beta: float = 1.0) -> jax.Array:
  """Returns the IoU branch's loss: smooth L1 between each valid box's predicted IoU for its class and its true IoU,
  averaged over the valid boxes.

  Args:
    predicted: `[..., S, C]`; labels: int `[..., S]` class indices; target: `[..., S]` IoU; valid: bool `[..., S]`.
    beta: smooth-L1 transition (1: the usual; IoU errors are below 1, so this is half the squared error).
  """
  error = smooth_l1_loss(class_iou(predicted, labels) - target, beta=beta)
  return jnp.sum(jnp.where(valid, error, 0.0)) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def refine_boxes(iou_fn: Callable[[jax.Array], jax.Array], boxes: jax.Array, valid: jax.Array, *, steps: int = 5,
                 step_size: float = 0.02, omega1: float = 0.001, omega2: float = -0.01,
                 image_shape: tuple[int, int] | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns `(boxes [N, 4], predicted IoU [N], steps taken int32 [N])` after IoU-Net's optimisation-based
  refinement (Algorithm 2): gradient ascent on the predicted IoU w.r.t. each box.

  For T = `steps` rounds, every box still active moves by b <- b + lambda s (s grad), grad = dIoU/db and
  s = (w, h, w, h) its size: the gradient w.r.t. the box's coordinates measured in its own size, and a step of
  lambda = `step_size` in those units (scale-equivariant; the paper scales the gradient by the box size and reads
  it as optimising (x / w, y / h, log w, log h)). A box stops when |new - previous| < omega1 (converged) or
  new - previous < omega2 < 0 (localisation degenerated), keeping the step that stopped it: the algorithm moves
  the box before it tests (so a step size that overshoots costs IoU; choose it on validation data: the default 0.02
  is what `faster_rcnn_iounet_shapes.py` chose, and 0.1 already lost 0.05 AP there). Steps that
  would make a box empty are not taken and stop it; with `image_shape` (h, w) every step is clipped to the image.
  Jittable: a fixed number of rounds with a mask, T + 1 evaluations of `iou_fn` and its gradient.

  Args:
    iou_fn: `boxes [N, 4] -> [N]` predicted IoU, each entry a differentiable function of its own box only
      (e.g. Precise RoI Pooling + the IoU head, read at each box's class).
    boxes: `[N, 4]` xyxy pixels; valid: bool `[N]` (invalid boxes are returned unchanged).
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  valid = jnp.asarray(valid, bool) & is_valid_box(boxes)

  def evaluate(b):
    score, vjp = jax.vjp(iou_fn, b)
    (grad,) = vjp(jnp.ones_like(score))  # entry n depends on box n only: these are the per-box gradients
    return score.astype(jnp.float32), jnp.where(jnp.isfinite(grad), grad, 0.0)

  def round_(_, state):
    b, score, grad, active, taken = state
    size = jnp.concatenate([b[:, 2:] - b[:, :2]] * 2, axis=-1)
    moved = b + step_size * size * size * grad
    if image_shape is not None:
      moved = clip_boxes(moved, height=image_shape[0], width=image_shape[1])
    usable = is_valid_box(moved)
    moved = jnp.where(usable[:, None], moved, b)
    new_score, new_grad = evaluate(moved)
    change = new_score - score
    step = active & usable
    b = jnp.where(step[:, None], moved, b)
    score = jnp.where(step, new_score, score)
    grad = jnp.where(step[:, None], new_grad, grad)
    stop = ~usable | (jnp.abs(change) < omega1) | (change < omega2)
    return b, score, grad, active & ~stop, taken + step.astype(jnp.int32)

  score, grad = evaluate(boxes)
  state = (boxes, score, grad, valid, jnp.zeros(valid.shape, jnp.int32))
  boxes, score, _, _, taken = jax.lax.fori_loop(0, steps, round_, state)
  return boxes, score, taken
