"""FPN level assignment and multi-level RoI Align against the FPN formula, per-box RoI Align and torchvision."""

from __future__ import annotations

import functools
import math

import chex
import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdet.ops.roi_levels import fpn_levels, multilevel_roi_align as _multilevel_eager
from tests.ops.test_roi_align import numpy_roi_align

STRIDES = (4, 8, 16, 32)
IMAGE = 512  # square images: level l is IMAGE / stride cells a side


@functools.partial(jax.jit, static_argnames=("output_size", "sampling_ratio", "aligned", "method"))
def multilevel_and_vjp(levels, boxes, indices, cotangent, *, output_size, sampling_ratio, aligned, method="taps"):
  """Returns `(output, d_levels)`, one compilation per static configuration."""
  fn = lambda f: _multilevel_eager(f, boxes, indices, output_size=output_size, strides=STRIDES,
                                   sampling_ratio=sampling_ratio, aligned=aligned, method=method)
  out, vjp = jax.vjp(fn, levels)
  return out, vjp(cotangent)[0]


def numpy_levels(boxes, *, k0=4, canonical=224, lo=2, hi=5, eps=0.0):
  area = (boxes[:, 2].astype(np.float64) - boxes[:, 0]) * (boxes[:, 3].astype(np.float64) - boxes[:, 1])
  return np.clip(np.floor(k0 + np.log2(np.sqrt(area) / canonical) + eps), lo, hi).astype(np.int32)


def pyramid_and_rois(seed, *, batch=2, channels=3, n=24):
  """Levels `[B, IMAGE / s, IMAGE / s, C]` and boxes on every level, their level value 0.03 from a boundary."""
  rng = np.random.default_rng(seed)
  levels = [rng.normal(size=(batch, IMAGE // s, IMAGE // s, channels)).astype(np.float32) for s in STRIDES]
  target = np.arange(n) % 4 + 2  # FPN levels 2..5 in turn
  value = target + rng.uniform(0.03, 0.97, n)
  value[target == 2] -= rng.uniform(0, 2, (target == 2).sum())  # level 2 also takes everything smaller
  scale = 224 * 2.0 ** (value - 4)  # sqrt(w h)
  aspect = np.exp(rng.uniform(np.log(0.5), np.log(2), n))
  sides = np.stack([scale * aspect, scale / aspect], axis=1)
  xy = rng.uniform(-0.1 * IMAGE, IMAGE, (n, 2))
  boxes = np.concatenate([xy, xy + sides], axis=1).astype(np.float32)
  return levels, boxes, rng.integers(0, batch, n).astype(np.int32)


@pytest.mark.parametrize("k0,canonical,lo,hi", [(4, 224, 2, 5), (4, 224, 3, 6), (5, 256, 2, 7), (3, 100, 1, 4)])
def test_levels_follow_the_fpn_formula(k0, canonical, lo, hi):
  rng = np.random.default_rng(k0 + hi)
  xy = rng.uniform(0, 500, (300, 2))
  boxes = np.concatenate([xy, xy + np.exp(rng.uniform(0, np.log(1500), (300, 2)))], 1).astype(np.float32)
  want = numpy_levels(boxes, k0=k0, canonical=canonical, lo=lo, hi=hi)
  got = np.asarray(fpn_levels(boxes, k0=k0, canonical_size=canonical, min_level=lo, max_level=hi))
  area = (boxes[:, 2] - boxes[:, 0]).astype(np.float64) * (boxes[:, 3] - boxes[:, 1])
  value = k0 + np.log2(np.sqrt(area) / canonical)
  away = np.abs(value - np.round(value)) > 1e-5  # float32 log2 may round across an exact boundary
  np.testing.assert_array_equal(got[away], want[away])
  assert set(np.unique(got)) <= set(range(lo, hi + 1)) and len(np.unique(got)) > 1


def test_levels_match_torchvision_level_mapper_off_its_eps():
  torch = pytest.importorskip("torch")
  poolers = pytest.importorskip("torchvision.ops.poolers")
  _, boxes, _ = pyramid_and_rois(0, n=200)
  mapper = poolers.LevelMapper(2, 5)
  theirs = mapper([torch.from_numpy(boxes)]).numpy() + 2
  np.testing.assert_array_equal(fpn_levels(boxes), theirs)


def test_a_box_just_below_a_level_boundary_stays_below_unlike_torchvision():
  # sqrt(w h) = 112 * (1 - 5e-7): log2 gives 2.9999993, floor 2; LevelMapper's +1e-6 lifts it to level 3.
  side = np.float32(112 * (1 - 5e-7))
  boxes = np.array([[0, 0, side, side], [0, 0, 112, 112], [0, 0, 224, 224]], np.float32)
  np.testing.assert_array_equal(fpn_levels(boxes), [2, 3, 4])
  np.testing.assert_array_equal(numpy_levels(boxes, eps=1e-6), [3, 3, 4])


def test_degenerate_boxes_get_the_lowest_level():
  boxes = np.array([[0, 0, 0, 10], [5, 5, 1, 1], [np.nan, 0, 10, 10], [0, 0, np.inf, 10], [0, 0, 1e4, 1e4]],
                   np.float32)
  np.testing.assert_array_equal(fpn_levels(boxes, min_level=3, max_level=6), [3, 3, 3, 3, 6])


@given(st.floats(1.0, 2000.0), st.floats(1.0, 2000.0), st.floats(1.0, 4.0))
def test_levels_grow_with_the_box(w, h, factor):
  boxes = np.array([[0, 0, w, h], [0, 0, w * factor, h * factor]], np.float32)
  small, large = np.asarray(fpn_levels(boxes))
  assert small <= large <= small + math.ceil(math.log2(factor)) + 1


@pytest.mark.parametrize("method", ["taps", "rows"])
@pytest.mark.parametrize("aligned,ratio,output_size", [(True, 2, (7, 7)), (False, 1, (3, 5))])
def test_multilevel_equals_roi_align_on_each_box_level(aligned, ratio, output_size, method):
  levels, boxes, indices = pyramid_and_rois(1 + ratio)
  rng = np.random.default_rng(0)
  cotangent = rng.normal(size=(len(boxes), *output_size, 3)).astype(np.float32)
  out, d_levels = multilevel_and_vjp(levels, boxes, indices, cotangent, output_size=output_size,
                                     sampling_ratio=ratio, aligned=aligned, method=method)
  level_of = np.asarray(fpn_levels(boxes)) - 2
  assert len(np.unique(level_of)) == len(STRIDES)  # every level is exercised
  for l, stride in enumerate(STRIDES):
    mine = level_of == l
    want = numpy_roi_align(levels[l], boxes[mine], indices[mine], output_size=output_size,
                           spatial_scale=1 / stride, sampling_ratio=ratio, aligned=aligned)
    np.testing.assert_allclose(np.asarray(out)[mine], want, rtol=1e-5, atol=2e-5)
    # The op is linear in each level: <d_level, v> must equal <cotangent, output with v on that level alone>.
    probe = [np.zeros_like(f) for f in levels]
    probe[l] = rng.normal(size=levels[l].shape).astype(np.float32)
    probed = np.asarray(multilevel_and_vjp(probe, boxes, indices, cotangent, output_size=output_size,
                                           sampling_ratio=ratio, aligned=aligned, method=method)[0])
    np.testing.assert_allclose(np.vdot(d_levels[l], probe[l]), np.vdot(cotangent, probed), rtol=1e-4)


def test_multilevel_matches_torchvision_multiscale_roi_align():
  torch = pytest.importorskip("torch")
  ops = pytest.importorskip("torchvision.ops")
  levels, boxes, indices = pyramid_and_rois(4)
  cotangent = np.zeros((len(boxes), 7, 7, 3), np.float32)
  ours = multilevel_and_vjp(levels, boxes, indices, cotangent, output_size=(7, 7), sampling_ratio=2,
                            aligned=False)[0]
  pooler = ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=2)
  order = np.argsort(indices, kind="stable")  # torchvision takes one box list per image, concatenated
  per_image = [torch.from_numpy(boxes[order][indices[order] == b]) for b in range(2)]
  features = {f"p{l + 2}": torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for l, f in enumerate(levels)}
  theirs = pooler(features, per_image, [(IMAGE, IMAGE)] * 2).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(ours)[order], theirs, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("method", ["taps", "rows"])
def test_invalid_rois_give_zeros(method):
  levels, boxes, indices = pyramid_and_rois(5)
  boxes[0] = [np.nan, 0, 10, 10]
  indices[1] = 9
  cotangent = np.ones((len(boxes), 3, 5, 3), np.float32)
  out, d_levels = multilevel_and_vjp(levels, boxes, indices, cotangent, output_size=(3, 5), sampling_ratio=1,
                                     aligned=False, method=method)
  np.testing.assert_array_equal(np.asarray(out)[:2], 0.0)
  assert all(np.all(np.isfinite(g)) for g in d_levels)


@pytest.mark.parametrize("strides", [(4, 16), (3, 6), (8, 4), ()])
def test_strides_must_be_consecutive_powers_of_two(strides):
  levels, boxes, indices = pyramid_and_rois(6)
  with pytest.raises(ValueError, match="strides"):
    _multilevel_eager(levels[:len(strides)] or levels[:1], boxes, indices, output_size=2, strides=strides)


class MultilevelVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_under_jit_and_without(self):
    levels, boxes, indices = pyramid_and_rois(7, n=6)
    fn = self.variant(lambda f, b, i: _multilevel_eager(f, b, i, output_size=(1, 2), strides=STRIDES,
                                                        sampling_ratio=1))
    out = fn(levels, boxes, indices)
    chex.assert_shape(out, (6, 1, 2, 3))
    level_of = np.asarray(fpn_levels(boxes)) - 2
    for r in range(6):
      l = level_of[r]
      want = numpy_roi_align(levels[l], boxes[r:r + 1], indices[r:r + 1], output_size=(1, 2),
                             spatial_scale=1 / STRIDES[l], sampling_ratio=1, aligned=True)
      np.testing.assert_allclose(out[r:r + 1], want, rtol=1e-5, atol=2e-5)
