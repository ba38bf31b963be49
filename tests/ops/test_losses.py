"""Losses against NumPy transcriptions of each paper's formula and torchvision where installed."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdet.ops import losses as L
from tests.ops.test_iou import numpy_pairwise


def np_sigmoid(x):
  return 1 / (1 + np.exp(-x.astype(np.float64)))


@pytest.mark.parametrize("beta", [0.0, 1.0 / 9, 1.0])
def test_smooth_l1_matches_formula_and_sigma_form(beta):
  x = np.linspace(-3, 3, 61).astype(np.float32)
  ref = np.abs(x) if beta == 0 else np.where(np.abs(x) < beta, 0.5 * x**2 / beta, np.abs(x) - 0.5 * beta)
  np.testing.assert_allclose(L.smooth_l1_loss(x, beta=beta), ref, rtol=1e-6, atol=1e-7)
  if beta:
    sigma = 1 / math.sqrt(beta)  # the course's form
    course = np.where(np.abs(x) < 1 / sigma**2, (sigma * x) ** 2 / 2, np.abs(x) - 0.5 / sigma**2)
    np.testing.assert_allclose(L.smooth_l1_loss(x, beta=beta), course, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0)])
def test_sigmoid_focal_loss_matches_formula(alpha, gamma):
  rng = np.random.default_rng(0)
  x = rng.normal(0, 3, (50, 7)).astype(np.float32)
  t = (rng.uniform(size=(50, 7)) < 0.3).astype(np.float32)
  p = np_sigmoid(x)
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  p_t = p * t + (1 - p) * (1 - t)
  ref = ce * (1 - p_t) ** gamma
  if alpha >= 0:
    ref = (alpha * t + (1 - alpha) * (1 - t)) * ref
  np.testing.assert_allclose(L.sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma), ref, rtol=1e-4, atol=1e-6)


def test_sigmoid_focal_loss_matches_torchvision():
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(1)
  x = rng.normal(0, 2, (100, 5)).astype(np.float32)
  t = (rng.uniform(size=(100, 5)) < 0.2).astype(np.float32)
  ref = ops.sigmoid_focal_loss(torch.from_numpy(x), torch.from_numpy(t), reduction="none").numpy()
  np.testing.assert_allclose(L.sigmoid_focal_loss(x, t), ref, rtol=1e-5, atol=1e-7)


def test_softmax_cross_entropy():
  rng = np.random.default_rng(2)
  x = rng.normal(0, 2, (10, 4)).astype(np.float64)
  y = rng.integers(0, 4, 10)
  ref = -(x[np.arange(10), y] - np.log(np.exp(x).sum(-1)))
  np.testing.assert_allclose(L.softmax_cross_entropy(x.astype(np.float32), y), ref, rtol=1e-5)


def test_penalty_reduced_focal_loss_matches_centernet_formula():
  rng = np.random.default_rng(3)
  x = rng.normal(0, 2, (8, 8, 3)).astype(np.float32)
  y = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32)
  y[2, 3, 1] = 1.0
  y[5, 5, 0] = 1.0
  p = np_sigmoid(x)
  ref = np.where(y == 1, -((1 - p) ** 2) * np.log(p), -((1 - y) ** 4) * p**2 * np.log(1 - p))
  np.testing.assert_allclose(L.penalty_reduced_focal_loss(x, y), ref, rtol=1e-4, atol=1e-7)
  huge = L.penalty_reduced_focal_loss(jnp.array([60.0, -60.0]), jnp.array([0.0, 1.0]))
  assert np.all(np.isfinite(huge))


def test_iou_loss_value_and_unitbox_gradient():
  pred = jnp.array([3.0, 2.0, 4.0, 5.0])  # l, t, r, b
  target = jnp.array([2.0, 3.0, 5.0, 4.0])
  x_area = (pred[1] + pred[3]) * (pred[0] + pred[2])
  t_area = (target[1] + target[3]) * (target[0] + target[2])
  ih = min(2.0, 3.0) + min(5.0, 4.0)
  iw = min(3.0, 2.0) + min(4.0, 5.0)
  inter = ih * iw
  union = x_area + t_area - inter
  np.testing.assert_allclose(L.iou_loss(pred, target), -math.log(inter / union), rtol=1e-6)
  # UnitBox eq. (4): dL/dx = (1/U) dX/dx - (U + I) / (U I) dI/dx.
  d_x_area = np.array([pred[1] + pred[3], pred[0] + pred[2], pred[1] + pred[3], pred[0] + pred[2]])
  d_inter = np.array([ih * (pred[0] < target[0]), iw * (pred[1] < target[1]),
                      ih * (pred[2] < target[2]), iw * (pred[3] < target[3])])
  expected = d_x_area / union - (union + inter) / (union * inter) * d_inter
  np.testing.assert_allclose(jax.grad(L.iou_loss)(pred, target), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_box_losses_match_torchvision(name):
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  fn = {"giou": ops.generalized_box_iou_loss, "diou": ops.distance_box_iou_loss,
        "ciou": ops.complete_box_iou_loss}[name]
  rng = np.random.default_rng(4)
  xy = rng.uniform(0, 50, (30, 2))
  a = np.concatenate([xy, xy + rng.uniform(1, 40, (30, 2))], -1).astype(np.float32)
  b = np.concatenate([xy + 3, xy + 3 + rng.uniform(1, 40, (30, 2))], -1).astype(np.float32)
  ta, tb = torch.from_numpy(a).requires_grad_(), torch.from_numpy(b)
  ref = fn(ta, tb, reduction="none")
  ref.sum().backward()
  ours = getattr(L, f"{name}_loss")
  np.testing.assert_allclose(ours(a, b), ref.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda p: ours(p, b).sum())(a), ta.grad.numpy(), rtol=1e-3, atol=1e-5)


def test_centerness_target():
  ltrb = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0], [-1.0, 2.0, 3.0, 4.0]], np.float32)
  ref = [math.sqrt(1 / 3 * 2 / 4), 1.0, 0.0]
  np.testing.assert_allclose(L.centerness_target(ltrb), ref, rtol=1e-6)
  assert np.all(np.isfinite(jax.grad(lambda x: L.centerness_target(x).sum())(jnp.zeros((2, 4)))))


def test_kl_loss_matches_paper():
  pred = np.array([0.0, 0.0, 0.0, 0.0], np.float32)
  target = np.array([0.5, -2.0, 0.5, 3.0], np.float32)
  alpha = np.array([0.0, 0.0, 1.0, -1.0], np.float32)
  d = np.abs(target - pred)
  ref = np.where(d > 1, np.exp(-alpha) * (d - 0.5), np.exp(-alpha) * d**2 / 2) + alpha / 2
  np.testing.assert_allclose(L.kl_loss(pred, target, alpha), ref, rtol=1e-6)


def _bce_inputs():
  rng = np.random.default_rng(5)
  x = rng.normal(0, 4, (40,)).astype(np.float32)
  return x, rng.uniform(0, 1, (40,)).astype(np.float32)  # soft targets, as centre-ness uses


def test_sigmoid_binary_cross_entropy_matches_numpy():
  x, t = _bce_inputs()
  p = np_sigmoid(x)
  np.testing.assert_allclose(L.sigmoid_binary_cross_entropy(x, t), -(t * np.log(p) + (1 - t) * np.log(1 - p)),
                             rtol=1e-4, atol=1e-6)


def test_sigmoid_binary_cross_entropy_matches_torch():
  torch = pytest.importorskip("torch")
  x, t = _bce_inputs()
  ref = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(x), torch.from_numpy(t),
                                                             reduction="none").numpy()
  np.testing.assert_allclose(L.sigmoid_binary_cross_entropy(x, t), ref, rtol=1e-5, atol=1e-6)


def test_ciou_loss_gradient_holds_alpha_constant():
  """jax.grad(ciou_loss) = the finite-difference gradient of 1 - DIoU + alpha0 v with alpha0 frozen (NumPy)."""
  pred = np.array([[1.0, 2.0, 6.0, 9.0], [0.0, 0.0, 3.0, 5.0]])
  target = np.array([[2.0, 1.0, 7.0, 7.0], [1.0, 1.0, 5.0, 4.0]])

  def terms(p, t):
    iou = np.diag(numpy_pairwise(p[None], t[None], "iou"))[0]
    diou = np.diag(numpy_pairwise(p[None], t[None], "diou"))[0]
    v = 4 / math.pi**2 * (math.atan((t[2] - t[0]) / (t[3] - t[1])) - math.atan((p[2] - p[0]) / (p[3] - p[1]))) ** 2
    return iou, diou, v

  want = np.zeros_like(pred)
  for n in range(len(pred)):
    iou, _, v = terms(pred[n], target[n])
    alpha0 = v / (1 - iou + v + 1e-7)
    for c in range(4):
      step = np.zeros(4)
      step[c] = 1e-5
      up, down = terms(pred[n] + step, target[n]), terms(pred[n] - step, target[n])
      want[n, c] = ((1 - up[1] + alpha0 * up[2]) - (1 - down[1] + alpha0 * down[2])) / 2e-5
  got = jax.grad(lambda p: L.ciou_loss(p, jnp.asarray(target, jnp.float32)).sum())(jnp.asarray(pred, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def _every_loss(logits, residual, boxes, ltrb, alpha):
  """One output vector from every differentiable loss, so one compilation checks all their gradients."""
  targets = jnp.array([0.0, 1.0, 0.3, 1.0, 0.0, 0.8])
  heatmap = jnp.array([1.0, 0.2, 0.0, 0.9, 1.0, 0.5])
  box_target = jnp.array([[2.0, 1.0, 7.0, 7.0], [5.0, 5.0, 9.0, 12.0]])
  ltrb_target = jnp.array([[2.0, 3.0, 4.0, 1.5], [1.0, 1.0, 1.0, 1.0]])
  parts = [L.smooth_l1_loss(residual, beta=1.0), L.smooth_l1_loss(residual, beta=1 / 9),
           L.sigmoid_binary_cross_entropy(logits, targets), L.sigmoid_focal_loss(logits, targets),
           L.sigmoid_focal_loss(logits, targets, alpha=-1.0, gamma=0.5),
           L.softmax_cross_entropy(logits.reshape(2, 3), jnp.array([2, 0])),
           L.penalty_reduced_focal_loss(logits, heatmap), L.iou_loss(ltrb, ltrb_target),
           L.giou_loss(boxes, box_target), L.diou_loss(boxes, box_target), L.centerness_target(ltrb),
           L.kl_loss(residual, jnp.zeros_like(residual), alpha)]
  return jnp.concatenate([p.ravel() for p in parts])


def test_gradients_match_finite_differences():
  logits = jnp.array([-2.0, 0.5, 3.0, -0.7, 1.2, 0.1])
  residual = jnp.array([-3.0, -0.5, 0.05, 0.4, 2.5, -1.7])  # away from the kinks at |x| = beta (1 and 1/9)
  boxes = jnp.array([[1.0, 2.0, 6.0, 9.0], [3.0, 4.0, 8.0, 10.0]])
  ltrb = jnp.array([[3.0, 2.0, 5.0, 2.5], [1.5, 0.5, 2.0, 1.2]])  # no ties with the target, where min() kinks
  alpha = jnp.array([-0.5, 0.0, 0.3, 1.0, -1.0, 0.7])
  check_grads(jax.jit(_every_loss), (logits, residual, boxes, ltrb, alpha), order=1, modes=["rev"], atol=2e-2,
              rtol=2e-2, eps=1e-3)


@jax.jit
def _degenerate_values_and_grads():
  """(loss, gradient) of each loss at saturated logits and degenerate distances / boxes, in one compilation."""
  logits = jnp.array([100.0, -100.0, 30.0, -30.0])
  targets = jnp.array([1.0, 0.0, 1.0, 0.0])
  bad_ltrb = jnp.array([[jnp.nan, 1, 1, 1], [jnp.inf, 1, 1, 1], [-1, -1, 2, 2], [0, 0, 0, 0]])
  bad_boxes = jnp.array([[0, 0, 1e-30, 1e-30], [0, 0, 1e20, 1e20], [0, 0, jnp.inf, 3], [4, 4, 1, 1]])
  unit = jnp.array([0.0, 0.0, 2.0, 2.0])
  cases = {
      # (1 - p_t)^gamma at p_t = 1 has an infinite (gamma < 1) or 0 * inf (gamma = 0) derivative.
      **{f"focal_gamma{g}": (lambda x, g=g: L.sigmoid_focal_loss(x, targets, gamma=g), logits)
         for g in (0.0, 0.5, 2.0)},
      "prfl": (lambda x: L.penalty_reduced_focal_loss(x, targets, alpha=0.5, beta=0.5), logits),
      # Labels outside [0, K): the matcher's IGNORE = -1, and K itself.
      "ce": (lambda x: L.softmax_cross_entropy(x, jnp.array([-1, 3, 1])), jnp.ones((3, 3))),
      "iou": (lambda d: L.iou_loss(d, jnp.ones((4, 4))), bad_ltrb),
      "centerness": (L.centerness_target, bad_ltrb),
      **{name: (lambda b, f=f: f(b, unit), bad_boxes)
         for name, f in (("giou", L.giou_loss), ("diou", L.diou_loss), ("ciou", L.ciou_loss))},
  }
  return {name: (fn(x), jax.grad(lambda y, f=fn: f(y).sum())(x)) for name, (fn, x) in cases.items()}


def test_saturated_and_degenerate_inputs_give_finite_losses_and_gradients():
  out = _degenerate_values_and_grads()
  for name, (value, grad) in out.items():
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), name
  ce, ce_grad = out["ce"]
  np.testing.assert_allclose(ce, [0, 0, math.log(3)], rtol=1e-6)  # ignored labels: no loss, no gradient
  np.testing.assert_array_equal(ce_grad[:2], 0)
  np.testing.assert_array_equal(out["centerness"][0], 0)
  for name in ("giou", "diou", "ciou"):
    np.testing.assert_array_equal(out[name][0], 1.0, err_msg=name)
    np.testing.assert_array_equal(out[name][1], 0.0, err_msg=name)


class LossesVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_elementwise_shapes_and_float32(self):
    rng = np.random.default_rng(9)
    logits = jnp.asarray(rng.normal(0, 2, (2, 5, 3)), jnp.bfloat16)
    targets = (rng.uniform(size=(2, 5, 3)) < 0.3).astype(np.float32)
    xy = rng.uniform(0, 20, (2, 5, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 10, (2, 5, 2))], -1).astype(np.float32)
    ltrb = rng.uniform(0.5, 5, (2, 5, 4)).astype(np.float32)

    @self.variant
    def losses(x, t, b, d):
      return {"smooth_l1": L.smooth_l1_loss(x, beta=1 / 9), "bce": L.sigmoid_binary_cross_entropy(x, t),
              "focal": L.sigmoid_focal_loss(x, t), "prfl": L.penalty_reduced_focal_loss(x, t),
              "ce": L.softmax_cross_entropy(x, jnp.argmax(t, -1)), "iou": L.iou_loss(d, d[::-1]),
              "giou": L.giou_loss(b, b[::-1]), "diou": L.diou_loss(b, b[::-1]), "ciou": L.ciou_loss(b, b[::-1]),
              "centerness": L.centerness_target(d), "kl": L.kl_loss(x, t, x)}

    out = losses(logits, targets, boxes, ltrb)
    chex.assert_shape([out[k] for k in ("smooth_l1", "bce", "focal", "prfl", "kl")], (2, 5, 3))
    chex.assert_shape([out[k] for k in ("ce", "iou", "giou", "diou", "ciou", "centerness")], (2, 5))
    chex.assert_type(list(out.values()), jnp.float32)
    assert all(np.all(np.isfinite(v)) for v in out.values())
    np.testing.assert_allclose(out["giou"], 1 - np.diagonal(
        numpy_pairwise(boxes.reshape(-1, 4), boxes[::-1].reshape(-1, 4), "giou")).reshape(2, 5), rtol=1e-5,
        atol=1e-6)
