"""The IoU family: NumPy transcriptions of torchvision's formulas, torchvision itself when present, invariants
over arbitrary (degenerate included) boxes, gradients, jit."""

import functools
import math

import chex
import hypothesis.extra.numpy as hnp
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


_pairwise = jax.jit(pairwise_iou, static_argnames="kind")


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_matches_torchvision(kind):
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  fn = {"iou": ops.box_iou, "giou": ops.generalized_box_iou, "diou": ops.distance_box_iou,
        "ciou": ops.complete_box_iou}[kind]
  rng = np.random.default_rng(2)
  b1, b2 = random_boxes(rng, 40, 300), random_boxes(rng, 30, 300)
  ours = np.asarray(_pairwise(b1, b2, kind=kind))
  np.testing.assert_allclose(ours, fn(torch.from_numpy(b1), torch.from_numpy(b2)).numpy(), rtol=2e-6, atol=2e-7)


# Not "ciou": torchvision computes CIoU's alpha under no_grad even in the metric; here the metric's gradient is
# exact (checked against finite differences below) and only `ciou_loss` stops it, as torchvision's loss does.
@pytest.mark.parametrize("kind", ["iou", "giou", "diou"])
def test_gradients_match_torch_autograd(kind):
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  fn = {"iou": ops.box_iou, "giou": ops.generalized_box_iou, "diou": ops.distance_box_iou}[kind]
  rng = np.random.default_rng(7)
  a, b = random_boxes(rng, 6, 60), random_boxes(rng, 5, 60)
  ta, tb = torch.from_numpy(a).requires_grad_(), torch.from_numpy(b).requires_grad_()
  fn(ta, tb).sum().backward()
  ga, gb = jax.jit(jax.grad(lambda x, y: pairwise_iou(x, y, kind=kind).sum(), argnums=(0, 1)))(a, b)
  np.testing.assert_allclose(ga, ta.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gb, tb.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(4)
  a, b = jnp.asarray(random_boxes(rng, 3)), jnp.asarray(random_boxes(rng, 2))
  # One function of every kind, pairwise and element-wise (b broadcast against a), so one compilation serves all.
  every_kind = jax.jit(lambda x, y: jnp.concatenate(
      [f(x, y[:, None] if f is elementwise_iou else y, kind=kind).ravel()
       for kind in KINDS for f in (pairwise_iou, elementwise_iou)]))
  # float32 finite differences with eps = 0.01 px: loose tolerances, but a wrong sign or factor still fails.
  check_grads(every_kind, (a, b), order=1, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-2)


SPECIAL = [0.0, 1.0, 5.0, np.nan, np.inf, -np.inf, 1e-30]
coords = st.one_of(st.floats(-100, 100, width=32), st.sampled_from(SPECIAL))
RANGES = {"iou": (0.0, 1.0), "giou": (-1.0, 1.0), "diou": (-1.0, 1.0), "ciou": (-1.5, 1.0)}


@jax.jit
def _all_kinds(boxes):
  """Every kind's matrix of `boxes` against themselves, its reversed diagonal element-wise, and the gradient (which
  includes identical pairs: IoU 1, where CIoU's alpha = v / (1 - IoU + v) has 0 / 0 without its eps)."""
  out = {}
  for kind in KINDS:
    out[kind] = (pairwise_iou(boxes, boxes, kind=kind), elementwise_iou(boxes, boxes[::-1], kind=kind),
                 jax.grad(lambda x, k=kind: pairwise_iou(x, x[::-1], kind=k).sum())(boxes))
  return out


@given(hnp.arrays(np.float32, (9, 4), elements=coords))
def test_every_kind_is_symmetric_bounded_one_on_itself_and_finite(boxes):
  # The boxes the IoU family scores (iou_valid_box), written out: finite, sides >= 1e-4 px, within 1e8 px.
  with np.errstate(invalid="ignore"):  # inf - inf
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  real = np.all(np.abs(boxes) <= 1e8, axis=1) & (w >= 1e-4) & (h >= 1e-4)
  for kind, (m, diag, grad) in _all_kinds(boxes).items():
    m = np.asarray(m)
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(grad)), kind
    np.testing.assert_allclose(m, m.T, rtol=1e-5, atol=1e-6, err_msg=kind)
    low, high = RANGES[kind]
    assert np.all((m >= low - 1e-6) & (m <= high + 1e-6)), kind
    np.testing.assert_allclose(diag, np.diag(m[:, ::-1]), rtol=1e-6, atol=1e-7, err_msg=kind)  # elementwise
    np.testing.assert_allclose(np.diag(m)[real], 1.0, rtol=1e-5, err_msg=kind)
    np.testing.assert_array_equal(m[~real], 0.0)


# Empty, inverted, NaN, inf, and positive sides too small (1e-30 px: the area underflows to 0, 1e-5 px: 1 / union^2
# does) or too far out (1e20 px: the area overflows). With 2 good boxes, 9 rows: the shape the hypothesis test compiled.
DEGENERATE = np.array([[0, 0, 0, 5], [3, 3, 1, 1], [0, 0, np.nan, 1], [0, 0, np.inf, 4],
                       [0, 0, 1e-30, 1e-30], [1, 1, 1 + 1e-5, 1 + 1e-5], [0, 0, 1e20, 1e20]], np.float32)


def test_degenerate_boxes_score_zero_with_finite_gradients():
  good = np.array([[0, 0, 4, 4], [1, 1, 3, 5]], np.float32)
  both = np.concatenate([good, DEGENERATE])
  for kind, (m, _, grad) in _all_kinds(both).items():
    m = np.asarray(m)
    assert np.all(np.isfinite(m)), kind
    np.testing.assert_array_equal(m[2:, :], 0, err_msg=kind)
    np.testing.assert_array_equal(m[:, 2:], 0, err_msg=kind)
    assert np.all(np.isfinite(grad)), kind
    np.testing.assert_array_equal(grad[2:], 0, err_msg=kind)  # no gradient flows into a degenerate box


class IouVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_batch_dims_and_values(self):
    rng = np.random.default_rng(8)
    a, b = random_boxes(rng, 2 * 5).reshape(2, 5, 4), random_boxes(rng, 2 * 3).reshape(2, 3, 4)

    @self.variant
    def every_kind(x, y):
      return {kind: (pairwise_iou(x, y, kind=kind), elementwise_iou(x[:, :3], y, kind=kind)) for kind in KINDS}

    for kind, (pair, elem) in every_kind(a, b).items():
      chex.assert_shape(pair, (2, 5, 3))
      chex.assert_shape(elem, (2, 3))
      chex.assert_type([pair, elem], jnp.float32)
      for k in range(2):
        np.testing.assert_allclose(pair[k], numpy_pairwise(a[k], b[k], kind), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(elem[k], np.diag(numpy_pairwise(a[k, :3], b[k], kind)), rtol=1e-5, atol=1e-6)
    vmapped = jax.vmap(functools.partial(pairwise_iou, kind="ciou"))(a, b)
    np.testing.assert_allclose(every_kind(a, b)["ciou"][0], vmapped, rtol=1e-6)


def test_unknown_kind_is_rejected():
  with pytest.raises(ValueError, match="kind"):
    pairwise_iou(np.zeros((1, 4)), np.zeros((1, 4)), kind="dice")
