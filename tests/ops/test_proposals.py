"""Region proposals against a NumPy transcription of the paper's rules: per-level top-N, decode, clip, min size,
NMS within a level, top-K over levels; fixed size, empty images, jit and vmap."""

import chex
import jax
import numpy as np
import pytest

from jaxdet.ops.anchors import multilevel_anchors
from jaxdet.ops.proposals import generate_proposals
from tests.ops.nms_reference import greedy_nms

IMAGE = (96, 128)


def decode_np(deltas, anchors, clip=np.log(1000 / 16)):
  w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
  cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
  pcx, pcy = deltas[:, 0] * w + cx, deltas[:, 1] * h + cy
  pw, ph = np.exp(np.minimum(deltas[:, 2], clip)) * w, np.exp(np.minimum(deltas[:, 3], clip)) * h
  return np.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], -1)


def reference(anchors, objectness, deltas, levels, pre, post, thr, min_size):
  h, w = IMAGE
  picked, level_of = [], []
  start = 0
  for l, size in enumerate(levels):
    order = np.argsort(-objectness[start:start + size], kind="stable")[:pre]
    picked += list(start + order)
    level_of += [l] * len(order)
    start += size
  picked = np.array(picked)
  boxes = decode_np(deltas[picked].astype(np.float64), anchors[picked].astype(np.float64))
  boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
  bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  scores = np.where((bw >= min_size) & (bh >= min_size) & (bw > 0) & (bh > 0), objectness[picked], -np.inf)
  keep = greedy_nms(boxes, scores, thr, classes=np.array(level_of))
  keep = sorted(keep, key=lambda i: (-scores[i], i))[:post]  # merged over levels by score
  return boxes[keep], scores[keep]


def case(seed, levels=((12, 16), (6, 8))):
  anchors, sizes = multilevel_anchors(levels, strides=(8, 16), sizes=((16, 32), (48,)), aspect_ratios=(0.5, 1, 2))
  n = anchors.shape[0]
  rng = np.random.default_rng(seed)
  return np.asarray(anchors), sizes, rng.normal(size=n).astype(np.float32), \
      (rng.normal(size=(n, 4)) * 0.3).astype(np.float32)


@pytest.mark.parametrize("seed,pre,post,thr,min_size", [(0, 100, 40, 0.7, 0.0), (1, 30, 50, 0.5, 4.0),
                                                        (2, 1000, 300, 0.7, 1.0), (3, 5, 8, 0.3, 0.0)])
def test_proposals_match_numpy(seed, pre, post, thr, min_size):
  anchors, sizes, objectness, deltas = case(seed)
  boxes, scores, valid = jax.jit(lambda a, o, d: generate_proposals(
      a, o, d, image_shape=IMAGE, level_sizes=sizes, pre_nms_top_n=pre, post_nms_top_n=post, nms_threshold=thr,
      min_size=min_size))(anchors, objectness, deltas)
  want_boxes, want_scores = reference(anchors, objectness, deltas, sizes, pre, post, thr, min_size)
  n = len(want_scores)
  chex.assert_shape([boxes, scores, valid], [(post, 4), (post,), (post,)])
  np.testing.assert_array_equal(np.asarray(valid), np.arange(post) < n)
  np.testing.assert_allclose(boxes[:n], want_boxes, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(scores[:n], want_scores)
  assert np.all(np.asarray(boxes[n:]) == 0)
  inside = (boxes[:n, 0] >= 0) & (boxes[:n, 2] <= IMAGE[1]) & (boxes[:n, 1] >= 0) & (boxes[:n, 3] <= IMAGE[0])
  assert np.all(np.asarray(inside))


def test_single_level_is_the_papers_global_top_n():
  anchors, _, objectness, deltas = case(4)
  one = generate_proposals(anchors, objectness, deltas, image_shape=IMAGE, pre_nms_top_n=50, post_nms_top_n=20)
  want_boxes, _ = reference(anchors, objectness, deltas, (len(anchors),), 50, 20, 0.7, 0.0)
  np.testing.assert_allclose(one[0][:len(want_boxes)], want_boxes, rtol=1e-5, atol=1e-4)


def test_an_image_with_nothing_to_propose_gives_no_valid_slot():
  anchors, sizes, objectness, deltas = case(5)
  deltas[:, 2:] = -30.0  # every box shrinks below a pixel
  boxes, scores, valid = generate_proposals(anchors, objectness, deltas, image_shape=IMAGE, level_sizes=sizes,
                                            post_nms_top_n=10, min_size=1.0)
  assert not np.any(np.asarray(valid)) and np.all(np.asarray(boxes) == 0) and np.all(np.asarray(scores) == 0)


def test_vmap_over_images_equals_a_loop():
  anchors, sizes, _, _ = case(6)
  rng = np.random.default_rng(6)
  objectness = rng.normal(size=(3, len(anchors))).astype(np.float32)
  deltas = (rng.normal(size=(3, len(anchors), 4)) * 0.3).astype(np.float32)
  fn = lambda o, d: generate_proposals(anchors, o, d, image_shape=IMAGE, level_sizes=sizes, pre_nms_top_n=40,
                                       post_nms_top_n=25)
  batched = jax.jit(jax.vmap(fn))(objectness, deltas)
  for i in range(3):  # jit and eager may round the decoding differently by an ulp
    for got, want in zip(batched, fn(objectness[i], deltas[i])):
      np.testing.assert_allclose(got[i], want, rtol=1e-6)


def test_level_sizes_must_cover_the_anchors():
  anchors, _, objectness, deltas = case(7)
  with pytest.raises(ValueError, match="level_sizes"):
    generate_proposals(anchors, objectness, deltas, image_shape=IMAGE, level_sizes=(5, 5))
