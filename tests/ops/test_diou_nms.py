"""DIoU-NMS against a NumPy loop transcription of the DIoU paper's rule (sec. 4.3), hypothesis properties of the
greedy result, equality with plain NMS where the centre penalty vanishes, and the padding / bad-input contract."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxdet.ops import batched_diou_nms, diou_nms, nms
from tests.ops.nms_reference import detector_boxes, iou_np, random_boxes


def diou_np(a, b, beta=1.0):
  """float64 IoU(a, b) - (rho^2 / c^2)^beta of two xyxy boxes (the paper's R_DIoU); -inf if either is empty."""
  if not (a[2] > a[0] and a[3] > a[1] and b[2] > b[0] and b[3] > b[1]):
    return -np.inf
  cw = max(a[2], b[2]) - min(a[0], b[0])
  ch = max(a[3], b[3]) - min(a[1], b[1])
  rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
  return iou_np(a, b) - (rho2 / (cw ** 2 + ch ** 2 + 1e-7)) ** beta


def diou_nms_np(boxes, scores, thr, classes=None, beta=1.0, score_threshold=None):
  """The paper's DIoU-NMS as a loop: take the highest remaining score (first index on ties), drop every remaining
  box of its class whose DIoU score with it exceeds `thr`, repeat. Non-finite inputs are never taken."""
  boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores, np.float64)
  remaining = [i for i in range(len(scores)) if np.isfinite(scores[i]) and np.all(np.isfinite(boxes[i]))
               and (score_threshold is None or scores[i] > score_threshold)]
  kept = []
  while remaining:
    m = max(remaining, key=lambda i: (scores[i], -i))
    kept.append(m)
    remaining = [i for i in remaining if i != m and not (
        (classes is None or classes[i] == classes[m]) and diou_np(boxes[m], boxes[i], beta) > thr)]
  return kept


def kept(indices, valid):
  return np.asarray(indices)[np.asarray(valid)].tolist()


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.45, 0.7, 1.0])
@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_equal_to_the_paper_rule(threshold, beta):
  rng = np.random.default_rng(int(threshold * 100 + beta * 10))
  boxes, scores = detector_boxes(rng, 120, num_objects=8, size=200.0)
  fn = jax.jit(functools.partial(diou_nms, iou_threshold=threshold, max_outputs=120, beta=beta))
  assert kept(*fn(boxes, scores)) == diou_nms_np(boxes, scores, threshold, beta=beta)


def test_class_aware_equal_to_the_paper_rule_and_max_outputs_truncates():
  rng = np.random.default_rng(1)
  boxes, scores = detector_boxes(rng, 150, num_objects=6, size=150.0)
  classes = rng.integers(0, 3, 150).astype(np.int32)
  want = diou_nms_np(boxes, scores, 0.45, classes=classes, score_threshold=0.2)
  got = kept(*jax.jit(functools.partial(batched_diou_nms, iou_threshold=0.45, max_outputs=150, score_threshold=0.2))(
      boxes, scores, classes))
  assert got == want and len(want) > 5
  assert kept(*batched_diou_nms(boxes, scores, classes, iou_threshold=0.45, max_outputs=5, score_threshold=0.2)) \
      == want[:5]


def test_keeps_an_overlapping_box_whose_centre_lies_apart():
  """Two side-by-side objects with IoU 0.5 (> 0.47): plain NMS drops the second, DIoU-NMS keeps it."""
  boxes = jnp.array([[0, 0, 30, 30], [10, 0, 40, 30]], jnp.float32)  # IoU 600 / 1200 = 0.5, rho^2 / c^2 = 100 / 2500
  scores = jnp.array([0.9, 0.8])
  assert kept(*nms(boxes, scores, iou_threshold=0.47, max_outputs=2)) == [0]
  assert kept(*diou_nms(boxes, scores, iou_threshold=0.47, max_outputs=2)) == [0, 1]
  assert kept(*diou_nms(boxes, scores, iou_threshold=0.45, max_outputs=2)) == [0]  # 0.5 - 0.04 = 0.46 > 0.45
  assert kept(*diou_nms(boxes, scores, iou_threshold=0.45, max_outputs=2, beta=0.5)) == [0, 1]  # 0.5 - 0.2 = 0.3


# the threshold traced: one compilation for every example
_diou_traced = jax.jit(lambda b, s, t, beta: diou_nms(b, s, iou_threshold=t, max_outputs=b.shape[0], beta=beta),
                       static_argnames="beta")
_nms_traced = jax.jit(lambda b, s, t: nms(b, s, iou_threshold=t, max_outputs=b.shape[0]))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 16), threshold=st.floats(0.0, 1.0), beta=st.sampled_from([0.6, 1.0]))
def test_result_is_the_greedy_answer(seed, threshold, beta):
  """Kept boxes come in descending score order, no kept box suppresses a later kept one, and every dropped box is
  suppressed by a kept box ranked above it: together, exactly the greedy answer."""
  rng, n = np.random.default_rng(seed), 30  # one shape: one compilation
  boxes = random_boxes(rng, n, size=60.0, max_wh=40.0)
  scores = rng.choice(np.linspace(0.1, 1.0, 7), n).astype(np.float32)  # ties happen
  out = kept(*_diou_traced(boxes, scores, np.float32(threshold), beta=beta))
  rank = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: (-scores[i], i)))}
  assert [rank[i] for i in out] == sorted(rank[i] for i in out)
  b = boxes.astype(np.float64)
  for x, i in enumerate(out):
    assert all(diou_np(b[j], b[i], beta) <= threshold + 1e-6 for j in out[:x])
  for i in set(range(n)) - set(out):
    assert any(rank[j] < rank[i] and diou_np(b[j], b[i], beta) > threshold - 1e-6 for j in out)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 16), threshold=st.floats(0.05, 0.95))
def test_concentric_boxes_behave_as_plain_nms(seed, threshold):
  """With every centre equal, rho = 0 and DIoU-NMS is NMS."""
  rng = np.random.default_rng(seed)
  wh = rng.uniform(2, 50, (25, 2))
  boxes = jnp.asarray(np.concatenate([50 - wh / 2, 50 + wh / 2], axis=1), jnp.float32)
  scores = jnp.asarray(rng.uniform(size=25), jnp.float32)
  assert kept(*_diou_traced(boxes, scores, np.float32(threshold), beta=1.0)) == kept(*_nms_traced(
      boxes, scores, np.float32(threshold)))


class DiouNmsVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_padding_non_finite_and_degenerate_inputs(self):
    boxes = jnp.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, jnp.nan, 1], [0, 0, 10, 10], [3, 3, 3, 3]],
                      jnp.float32)
    scores = jnp.array([0.5, 0.9, 0.99, jnp.inf, 0.2])
    fn = self.variant(functools.partial(diou_nms, iou_threshold=0.5, max_outputs=6))
    idx, valid = fn(boxes, scores)
    chex.assert_shape([idx, valid], (6,))
    # 2 and 3 are not finite; the empty box 4 suppresses nothing and is kept by its score
    assert kept(idx, valid) == [1, 4] and np.all(np.asarray(idx)[~np.asarray(valid)] == 0)
    assert not np.any(np.asarray(fn(boxes[:0], scores[:0])[1]))


def test_vmap_equals_per_image_calls_and_bad_arguments_are_named():
  rng = np.random.default_rng(3)
  boxes = np.stack([random_boxes(rng, 50, size=80.0) for _ in range(3)])
  scores = rng.uniform(size=(3, 50)).astype(np.float32)
  fn = functools.partial(diou_nms, iou_threshold=0.4, max_outputs=20)
  idx, valid = jax.jit(jax.vmap(fn))(boxes, scores)
  for b in range(3):
    assert kept(idx[b], valid[b]) == kept(*fn(boxes[b], scores[b]))
  with pytest.raises(ValueError, match="iou_threshold"):
    diou_nms(boxes[0], scores[0], iou_threshold=1.5, max_outputs=3)
  with pytest.raises(ValueError, match="beta"):
    diou_nms(boxes[0], scores[0], iou_threshold=0.5, max_outputs=3, beta=0.0)
  with pytest.raises(ValueError, match=r"\[N, 4\]"):
    diou_nms(boxes, scores, iou_threshold=0.5, max_outputs=3)
