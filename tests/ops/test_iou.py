"""The IoU family against NumPy transcriptions of torchvision's formulas, and torchvision itself when present."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxdet.ops.iou import elementwise_iou, pairwise_iou

KINDS = ["iou", "giou", "diou", "ciou"]


def numpy_pairwise(b1, b2, kind):
  """Direct transcription of torchvision.ops.boxes (box_iou, generalized/distance/complete_box_iou), eps=1e-7."""
  b1, b2 = b1.astype(np.float64), b2.astype(np.float64)
  out = np.zeros((len(b1), len(b2)))
  for i, a in enumerate(b1):
    for j, b in enumerate(b2):
      area_a = (a[2] - a[0]) * (a[3] - a[1])
      area_b = (b[2] - b[0]) * (b[3] - b[1])
      iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
      ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
      inter = iw * ih
      union = area_a + area_b - inter
      iou = inter / union
      cw = max(a[2], b[2]) - min(a[0], b[0])
      ch = max(a[3], b[3]) - min(a[1], b[1])
      if kind == "iou":
        v = iou
      elif kind == "giou":
        v = iou - (cw * ch - union) / (cw * ch)
      else:
        d2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
        diou = iou - d2 / (cw**2 + ch**2 + 1e-7)
        if kind == "diou":
          v = diou
        else:
          ar = (4 / math.pi**2) * (math.atan((a[2] - a[0]) / (a[3] - a[1]))
                                    - math.atan((b[2] - b[0]) / (b[3] - b[1]))) ** 2
          v = diou - ar / (1 - iou + ar + 1e-7) * ar
      out[i, j] = v
  return out


def random_boxes(rng, n, scale=50.0):
  xy = rng.uniform(0, scale, (n, 2))
  wh = rng.uniform(0.1, scale, (n, 2))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_matches_numpy_reference(kind):
  rng = np.random.default_rng(1)
  b1, b2 = random_boxes(rng, 13), random_boxes(rng, 7)
  np.testing.assert_allclose(pairwise_iou(b1, b2, kind=kind), numpy_pairwise(b1, b2, kind), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_matches_torchvision(kind):
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  fn = {"iou": ops.box_iou, "giou": ops.generalized_box_iou, "diou": ops.distance_box_iou,
        "ciou": ops.complete_box_iou}[kind]
  rng = np.random.default_rng(2)
  b1, b2 = random_boxes(rng, 40, 300), random_boxes(rng, 30, 300)
  ours = np.asarray(pairwise_iou(b1, b2, kind=kind))
  np.testing.assert_allclose(ours, fn(torch.from_numpy(b1), torch.from_numpy(b2)).numpy(), rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_elementwise_is_the_diagonal_of_pairwise(kind):
  rng = np.random.default_rng(3)
  b1, b2 = random_boxes(rng, 9), random_boxes(rng, 9)
  np.testing.assert_allclose(elementwise_iou(b1, b2, kind=kind), np.diag(pairwise_iou(b1, b2, kind=kind)),
                             rtol=1e-6, atol=1e-7)


@given(st.integers(0, 10_000))
def test_iou_is_symmetric_bounded_and_one_on_itself(seed):
  rng = np.random.default_rng(seed)
  b1, b2 = random_boxes(rng, 6), random_boxes(rng, 5)
  m = np.asarray(pairwise_iou(b1, b2))
  np.testing.assert_allclose(m, np.asarray(pairwise_iou(b2, b1)).T, rtol=1e-6)
  assert np.all((m >= 0) & (m <= 1))
  np.testing.assert_allclose(np.diag(pairwise_iou(b1, b1)), 1.0, rtol=1e-6)
  g = np.asarray(pairwise_iou(b1, b2, kind="giou"))
  assert np.all((g >= -1) & (g <= 1 + 1e-6))


DEGENERATE = np.array([[0, 0, 0, 5], [3, 3, 1, 1], [0, 0, np.nan, 1], [0, 0, np.inf, 4], [2, 2, 2, 2]], np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_boxes_score_zero_with_finite_gradients(kind):
  good = np.array([[0, 0, 4, 4], [1, 1, 3, 5]], np.float32)
  both = np.concatenate([good, DEGENERATE])
  m = np.asarray(pairwise_iou(both, both, kind=kind))
  assert np.all(np.isfinite(m))
  np.testing.assert_array_equal(m[2:, :], 0)
  np.testing.assert_array_equal(m[:, 2:], 0)
  grads = jax.grad(lambda a, b: pairwise_iou(a, b, kind=kind).sum(), argnums=(0, 1))(both, both)
  assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_finite_differences(kind):
  rng = np.random.default_rng(4)
  b1 = jnp.asarray(random_boxes(rng, 3), jnp.float64) if jax.config.x64_enabled else jnp.asarray(random_boxes(rng, 3))
  b2 = jnp.asarray(random_boxes(rng, 3))
  check_grads(lambda a, b: elementwise_iou(a, b, kind=kind), (b1, b2), order=1, modes=["rev"], atol=5e-2, rtol=5e-2,
              eps=1e-2)


def test_identical_boxes_have_finite_gradient():
  b = jnp.array([[1.0, 2.0, 5.0, 7.0]])
  for kind in KINDS:
    g = jax.grad(lambda x: elementwise_iou(x, b, kind=kind).sum())(b)
    assert np.all(np.isfinite(g)), kind


@pytest.mark.parametrize("jit", [False, True])
def test_shapes_batched_and_vmapped(jit):
  f = jax.jit(pairwise_iou, static_argnames="kind") if jit else pairwise_iou
  rng = np.random.default_rng(5)
  a, b = random_boxes(rng, 2 * 4).reshape(2, 4, 4), random_boxes(rng, 2 * 3).reshape(2, 3, 4)
  out = f(a, b, kind="giou")
  assert out.shape == (2, 4, 3)
  np.testing.assert_allclose(out, jax.vmap(lambda x, y: pairwise_iou(x, y, kind="giou"))(a, b), rtol=1e-6)


def test_unknown_kind_is_rejected():
  with pytest.raises(ValueError, match="kind"):
    pairwise_iou(np.zeros((1, 4)), np.zeros((1, 4)), kind="dice")
