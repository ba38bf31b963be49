"""Detection losses, element-wise: every function returns a loss per element and the caller reduces.

Normalisation differs per paper (by number of anchors, positives or objects), so none is applied here. All
losses are computed in float32 and are finite, with finite gradients, for any finite logits (saturated ones
included) and for degenerate boxes or distances (empty, inverted, NaN, inf).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdet.ops.iou import elementwise_iou, iou_valid_box

_IOU_EPS = 1e-7


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _pow(x: jax.Array, exponent: float) -> jax.Array:
  """x ** exponent for x >= 0 whose gradient is finite at x = 0 (there d/dx x^g is inf or 0 * inf for g < 1)."""
  if exponent == 0:
    return jnp.ones_like(x)
  positive = x > 0
  return jnp.where(positive, jnp.where(positive, x, 1.0) ** exponent, 0.0)


def smooth_l1_loss(x: jax.Array, *, beta: float = 1.0) -> jax.Array:
  """Returns `[...]` the element-wise smooth L1 (Huber / beta) loss of the residual `x [...]`.

  0.5 x^2 / beta where |x| < beta, else |x| - 0.5 beta (Fast R-CNN eq. 3 with beta = 1). The course's sigma form,
  f(x) = (sigma x)^2 / 2 if |x| < 1 / sigma^2 else |x| - 0.5 / sigma^2, is beta = 1 / sigma^2 (sigma = 3 in the
  Faster R-CNN RPN code is beta = 1/9). beta = 0 is the plain L1 loss, as in torchvision.
  """
  x = jnp.abs(_f32(x))
  if beta == 0:
    return x
  return jnp.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Returns `[...]` element-wise binary cross-entropy of `sigmoid(logits)` against soft `targets` in [0, 1].

  -(t log sigmoid(x) + (1 - t) log sigmoid(-x)), computed with log-sigmoid so saturated logits stay finite; equal to
  torch's `binary_cross_entropy_with_logits(..., reduction="none")`. FCOS trains its centre-ness branch with it
  against `centerness_target`.
  """
  logits, targets = _f32(logits), _f32(targets)
  return -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, *, alpha: float = 0.25,
                       gamma: float = 2.0) -> jax.Array:
  """Returns the element-wise focal loss (RetinaNet, Lin et al. 2017, eq. 5) of sigmoid `logits`.

  FL = alpha_t (1 - p_t)^gamma BCE(p, t) with p_t = p t + (1 - p)(1 - t) and alpha_t = alpha t + (1 - alpha)(1 - t).
  Equal to torchvision's `sigmoid_focal_loss(..., reduction="none")`, including alpha < 0 disabling the weighting.
  RetinaNet normalises the sum by the number of positive anchors. Differs from torchvision only in the gradient
  where p_t rounds to 1 in float32 (|logit| > ~17): 0 there for every gamma, where torchvision's (1 - p_t)^gamma
  gives NaN for gamma < 1.

  Args:
    logits: `[...]` float logits; targets: `[...]` float in [0, 1] (one-hot class targets).
  """
  logits, targets = _f32(logits), _f32(targets)
  p = jax.nn.sigmoid(logits)
  ce = sigmoid_binary_cross_entropy(logits, targets)
  p_t = p * targets + (1 - p) * (1 - targets)
  loss = ce * _pow(1 - p_t, gamma)
  if alpha >= 0:
    loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
  return loss


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Returns `[...]` cross-entropy -log softmax(logits)[label] of `logits [..., K]` against int `labels [...]`.

  Fast R-CNN's L_cls (label 0 is background there). A label outside [0, K) — such as the matcher's IGNORE = -1 —
  gives loss 0 and no gradient rather than wrapping around or reading out of bounds, so `sum(loss * mask)` is
  safe.
  """
  log_p = jax.nn.log_softmax(_f32(logits), axis=-1)
  labels = jnp.asarray(labels, jnp.int32)
  num_classes = log_p.shape[-1]
  inside = (labels >= 0) & (labels < num_classes)
  picked = jnp.take_along_axis(log_p, jnp.clip(labels, 0, num_classes - 1)[..., None], axis=-1)[..., 0]
  return jnp.where(inside, -picked, 0.0)


def penalty_reduced_focal_loss(logits: jax.Array, heatmap: jax.Array, *, alpha: float = 2.0,
                               beta: float = 4.0) -> jax.Array:
  """Returns the element-wise penalty-reduced focal loss of CenterNet (eq. 1) / CornerNet.

  With p = sigmoid(logit) and target heatmap Y: -(1 - p)^alpha log p where Y = 1, and
  -(1 - Y)^beta p^alpha log(1 - p) elsewhere. The caller divides the sum by the number of objects. Computed from
  logits with log-sigmoid, which is exact where the official code clamps p to [1e-4, 1 - 1e-4].

  Args:
    logits: `[..., C]` heatmap logits; heatmap: `[..., C]` gaussian-splatted targets in [0, 1].
  """
  logits, heatmap = _f32(logits), _f32(heatmap)
  p = jax.nn.sigmoid(logits)
  positive = heatmap == 1.0
  pos = _pow(1 - p, alpha) * -jax.nn.log_sigmoid(logits)
  neg = _pow(1 - heatmap, beta) * _pow(p, alpha) * -jax.nn.log_sigmoid(-logits)
  return jnp.where(positive, pos, neg)


def _ltrb_iou(pred: jax.Array, target: jax.Array) -> jax.Array:
  """UnitBox's IoU of two boxes written as distances (l, t, r, b) from one location."""
  pred, target = _f32(pred), _f32(target)
  # Negative distances count as 0 and NaN / inf ones as an empty box, so the loss is -ln(eps), not NaN.
  pred = jnp.where(jnp.isfinite(pred), jnp.maximum(pred, 0.0), 0.0)
  target = jnp.where(jnp.isfinite(target), jnp.maximum(target, 0.0), 0.0)
  area_p = (pred[..., 0] + pred[..., 2]) * (pred[..., 1] + pred[..., 3])
  area_t = (target[..., 0] + target[..., 2]) * (target[..., 1] + target[..., 3])
  iw = jnp.minimum(pred[..., 0], target[..., 0]) + jnp.minimum(pred[..., 2], target[..., 2])
  ih = jnp.minimum(pred[..., 1], target[..., 1]) + jnp.minimum(pred[..., 3], target[..., 3])
  inter = iw * ih
  union = area_p + area_t - inter
  ok = union > 0
  return jnp.where(ok, inter / jnp.where(ok, union, 1.0), 0.0)


def iou_loss(pred_ltrb: jax.Array, target_ltrb: jax.Array, *, eps: float = 1e-6) -> jax.Array:
  """Returns `[...]` the UnitBox IoU loss -ln(IoU) of distance boxes `(l, t, r, b)` `[..., 4]` (FCOS).

  Follows UnitBox's Algorithm 1 (Yu et al. 2016): X = (t + b)(l + r), I = (min t + min b)(min l + min r),
  U = X + X~ - I. Its gradient is dL/dx = (1/U) dX/dx - (U + I)/(U I) dI/dx (UnitBox eq. 4). Negative distances are
  treated as 0, and IoU is floored at `eps` so the loss of a disjoint pair is -ln(eps), finite.
  """
  return -jnp.log(jnp.maximum(_ltrb_iou(pred_ltrb, target_ltrb), eps))


def giou_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Returns `[...]` 1 - GIoU for aligned xyxy boxes `[..., 4]` (Rezatofighi et al. 2019); 1 for degenerate."""
  return 1.0 - elementwise_iou(pred, target, kind="giou")


def diou_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Returns `[...]` 1 - DIoU for aligned xyxy boxes `[..., 4]` (Zheng et al. 2020); 1 for degenerate."""
  return 1.0 - elementwise_iou(pred, target, kind="diou")


def ciou_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Returns `[...]` 1 - CIoU for aligned xyxy boxes `[..., 4]` (Zheng et al. 2020).

  As in the paper and torchvision's `complete_box_iou_loss`, the trade-off alpha = v / (1 - IoU + v) is treated
  as a constant in the gradient. 1 for degenerate boxes (`iou_valid_box` False), with a zero gradient.
  """
  pred, target = _f32(pred), _f32(target)
  valid = iou_valid_box(pred) & iou_valid_box(target)
  unit = jnp.array([0.0, 0.0, 1.0, 1.0], jnp.float32)
  p = jnp.where(valid[..., None], pred, unit)
  t = jnp.where(valid[..., None], target, unit)
  iou = elementwise_iou(p, t)
  v = (4 / math.pi**2) * (jnp.arctan((t[..., 2] - t[..., 0]) / (t[..., 3] - t[..., 1]))
                          - jnp.arctan((p[..., 2] - p[..., 0]) / (p[..., 3] - p[..., 1]))) ** 2
  alpha = jax.lax.stop_gradient(v / (1 - iou + v + _IOU_EPS))
  loss = 1.0 - elementwise_iou(p, t, kind="diou") + alpha * v
  return jnp.where(valid, loss, 1.0)


def centerness_target(ltrb: jax.Array) -> jax.Array:
  """Returns `[...]` FCOS centre-ness sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b)) of `ltrb [..., 4]`.

  In [0, 1]; 0 for locations outside the box (a distance <= 0) and for NaN / inf distances. Trained with
  `sigmoid_binary_cross_entropy` on the centre-ness logit at positive locations (FCOS eq. 3).
  """
  ltrb = _f32(ltrb)
  lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
  inside = jnp.all((ltrb > 0) & jnp.isfinite(ltrb), axis=-1)
  lr = jnp.where(inside[..., None], lr, 1.0)
  tb = jnp.where(inside[..., None], tb, 1.0)
  ratio = (lr.min(-1) / lr.max(-1)) * (tb.min(-1) / tb.max(-1))
  return jnp.where(inside, jnp.sqrt(ratio), 0.0)


def kl_loss(pred: jax.Array, target: jax.Array, log_variance: jax.Array) -> jax.Array:
  """Returns the element-wise KL loss of Softer-NMS (He et al., "Bounding Box Regression with Uncertainty", 2019).

  The network predicts each coordinate x_e and alpha = log(sigma^2); with d = x_g - x_e the loss is
  e^{-alpha} (|d| - 1/2) + alpha / 2 for |d| > 1 and e^{-alpha} d^2 / 2 + alpha / 2 otherwise (eq. 9, smooth-L1
  form). Predicting alpha rather than sigma keeps the loss finite and its gradient stable (for alpha > -80, where
  e^{-alpha} still fits a float32).

  Args:
    pred, target, log_variance: broadcast-compatible `[...]` (typically `[..., 4]` box coordinates or deltas).
  """
  d = jnp.abs(_f32(target) - _f32(pred))
  alpha = _f32(log_variance)
  return jnp.exp(-alpha) * smooth_l1_loss(d, beta=1.0) + 0.5 * alpha
