"""Losses against NumPy transcriptions of each paper's formula and torchvision where installed."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdet.ops import losses as L


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


def test_iou_loss_finite_for_disjoint_and_degenerate():
  out = L.iou_loss(jnp.array([[0.0, 0, 0, 0], [-1.0, 2, 3, 4]]), jnp.array([[1.0, 1, 1, 1], [1.0, 1, 1, 1]]))
  assert np.all(np.isfinite(out))
  g = jax.grad(lambda p: L.iou_loss(p, jnp.ones((2, 4))).sum())(jnp.array([[0.0, 0, 0, 0], [-1.0, 2, 3, 4]]))
  assert np.all(np.isfinite(g))


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


@pytest.mark.parametrize("name", ["giou", "diou", "ciou"])
def test_box_losses_gradients_and_degenerate(name):
  fn = getattr(L, f"{name}_loss")
  a = jnp.array([[1.0, 2.0, 6.0, 9.0], [0.0, 0.0, 3.0, 3.0]])
  b = jnp.array([[2.0, 1.0, 7.0, 7.0], [5.0, 5.0, 8.0, 9.0]])
  if name != "ciou":  # CIoU's alpha is a stop-gradient constant, so its gradient is not the function's
    check_grads(lambda p: fn(p, b), (a,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-2)
  bad = jnp.array([[0.0, 0.0, 0.0, 0.0], [jnp.nan, 0.0, 1.0, 1.0]])
  np.testing.assert_array_equal(fn(bad, b), 1.0)
  assert np.all(np.isfinite(jax.grad(lambda p: fn(p, b).sum())(bad)))


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
  check_grads(lambda p, a: L.kl_loss(p, jnp.asarray(target), a), (jnp.asarray(pred) + 0.1, jnp.asarray(alpha)),
              order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-3)


@pytest.mark.parametrize("jit", [False, True])
def test_focal_gradients(jit):
  f = (lambda x, t: L.sigmoid_focal_loss(x, t).sum())
  f = jax.jit(f) if jit else f
  x = jnp.array([[-2.0, 0.5, 3.0]])
  check_grads(lambda z: f(z, jnp.array([[0.0, 1.0, 1.0]])), (x,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2,
              eps=1e-3)
