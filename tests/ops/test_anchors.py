"""Anchors and priors: counts, sizes, ratios, centres, and torchvision's generator where installed."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdet.ops import anchors as A


def test_course_example_17100_anchors():
  anchors = A.faster_rcnn_anchors((38, 50), stride=16)
  assert anchors.shape == (17_100, 4)


def test_templates_keep_area_and_ratio():
  t = A.anchor_templates((128, 256), (0.5, 1.0, 2.0))
  w, h = t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]
  np.testing.assert_allclose(w * h, np.repeat([128**2, 256**2], 3), rtol=1e-5)
  np.testing.assert_allclose(h / w, np.tile([0.5, 1.0, 2.0], 2), rtol=1e-5)


def test_grid_order_and_centres():
  anchors = np.asarray(A.grid_anchors((2, 3), stride=10, sizes=(4,), aspect_ratios=(1.0, 2.0)))
  centres = (anchors[:, :2] + anchors[:, 2:]) / 2
  # index (i * W + j) * A + a, centred at ((j + 0.5) s, (i + 0.5) s)
  i, j, a = 1, 2, 1
  np.testing.assert_allclose(centres[(i * 3 + j) * 2 + a], [25, 15], atol=1e-5)
  zero = np.asarray(A.grid_anchors((2, 3), stride=10, sizes=(4,), aspect_ratios=(1.0,), offset=0.0))
  np.testing.assert_allclose((zero[:, :2] + zero[:, 2:])[4] / 2, [10, 10], atol=1e-5)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 3), st.integers(1, 3))
def test_count_is_cells_times_anchors_per_cell(h, w, n_sizes, n_ratios):
  anchors = A.grid_anchors((h, w), stride=8, sizes=tuple(16.0 * (k + 1) for k in range(n_sizes)),
                           aspect_ratios=tuple(0.5 * (k + 1) for k in range(n_ratios)))
  assert anchors.shape == (h * w * n_sizes * n_ratios, 4)


def test_fpn_and_retinanet_levels():
  shapes = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
  anchors, counts = A.fpn_anchors(shapes)
  assert counts == tuple(h * w * 3 for h, w in shapes) and anchors.shape[0] == sum(counts)
  first = np.asarray(anchors[:3])
  np.testing.assert_allclose((first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1]), 32**2, rtol=1e-5)
  anchors, counts = A.retinanet_anchors([(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)])
  assert counts[0] == 8 * 8 * 9
  sq = np.asarray(anchors[:9])[[1, 4, 7]]  # ratio 1 of each octave scale in the first cell
  np.testing.assert_allclose(sq[:, 2] - sq[:, 0], [32 * 2 ** (k / 3) for k in range(3)], rtol=1e-5)


def test_ssd300_has_8732_priors_with_paper_scales():
  priors = np.asarray(A.ssd_priors(A.SSD300_FEATURE_SIZES, aspect_ratios=A.SSD300_ASPECT_RATIOS))
  assert priors.shape == (8732, 4)
  np.testing.assert_allclose(A.ssd_scales(6), [0.2, 0.34, 0.48, 0.62, 0.76, 0.9], rtol=1e-6)
  first = priors[:4]  # first cell of the 38 x 38 map: s, sqrt(s s'), ratio 2 and 1/2
  w, h = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
  np.testing.assert_allclose(w, [0.2, math.sqrt(0.2 * 0.34), 0.2 * math.sqrt(2), 0.2 / math.sqrt(2)], rtol=1e-5)
  np.testing.assert_allclose(h, [0.2, math.sqrt(0.2 * 0.34), 0.2 / math.sqrt(2), 0.2 * math.sqrt(2)], rtol=1e-5)
  np.testing.assert_allclose((first[0, :2] + first[0, 2:]) / 2, [0.5 / 38, 0.5 / 38], rtol=1e-5)


def test_yolo_anchor_sets():
  anchors = np.asarray(A.yolo_anchors((13, 13), stride=32))
  assert anchors.shape == (13 * 13 * 3, 4)
  np.testing.assert_allclose(anchors[0, 2:] - anchors[0, :2], [116, 90])
  assert sorted(A.YOLOV3_ANCHORS) == [8, 16, 32]


def test_matches_torchvision_anchor_generator_with_zero_offset():
  torch = pytest.importorskip("torch")
  tv = pytest.importorskip("torchvision.models.detection.anchor_utils")
  gen = tv.AnchorGenerator(sizes=((32, 64),), aspect_ratios=((0.5, 1.0, 2.0),))
  images = type("ImageList", (), {})()
  images.tensors = torch.zeros(1, 3, 64, 96)
  images.image_sizes = [(64, 96)]
  ref = gen(images, [torch.zeros(1, 8, 4, 6)])[0].numpy()
  # torchvision orders ratios outer and sizes inner and rounds the templates to integers.
  ours = np.asarray(A.grid_anchors((4, 6), stride=16, sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0), offset=0.0))
  ours = ours.reshape(24, 2, 3, 4).transpose(0, 2, 1, 3).reshape(-1, 4)
  np.testing.assert_allclose(ours, ref, atol=0.5 + 1e-4)


def numpy_grid_anchors(h, w, stride, sizes, ratios, offset=0.5):
  """Loop transcription: for each cell row-major, each size, each ratio r = h / w, a box of area size^2."""
  out = []
  for i in range(h):
    for j in range(w):
      cx, cy = (j + offset) * stride, (i + offset) * stride
      for s in sizes:
        for r in ratios:
          bw, bh = s / math.sqrt(r), s * math.sqrt(r)
          out.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
  return np.array(out)


def numpy_ssd_priors(feature_sizes, ratios, s_min=0.2, s_max=0.9):
  """Loop transcription of SSD sec. 2.2 (per cell: s_k square, sqrt(s_k s_k+1) square, then each ratio and its
  reciprocal), with s_m+1 = 1."""
  m = len(feature_sizes)
  scales = [s_min + (s_max - s_min) * k / (m - 1) for k in range(m)] + [1.0]
  out = []
  for k, f in enumerate(feature_sizes):
    for i in range(f):
      for j in range(f):
        cx, cy = (j + 0.5) / f, (i + 0.5) / f
        shapes = [(scales[k], scales[k])] + [(math.sqrt(scales[k] * scales[k + 1]),) * 2]
        for a in ratios[k]:
          shapes += [(scales[k] * math.sqrt(a), scales[k] / math.sqrt(a)),
                     (scales[k] / math.sqrt(a), scales[k] * math.sqrt(a))]
        out += [[cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2] for bw, bh in shapes]
  return np.array(out)


@pytest.mark.parametrize("offset", [0.5, 0.0])
def test_grid_anchors_match_loop_transcription(offset):
  got = A.grid_anchors((3, 5), stride=16, sizes=(32, 64, 128), aspect_ratios=(0.5, 1.0, 2.0), offset=offset)
  np.testing.assert_allclose(got, numpy_grid_anchors(3, 5, 16, (32, 64, 128), (0.5, 1.0, 2.0), offset), rtol=1e-5,
                             atol=1e-4)


def test_ssd_priors_match_loop_transcription():
  sizes, ratios = (5, 3, 1), ((2,), (2, 3), (2,))
  np.testing.assert_allclose(A.ssd_priors(sizes, aspect_ratios=ratios), numpy_ssd_priors(sizes, ratios), rtol=1e-5,
                             atol=1e-6)


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=5, max_size=5))
def test_multilevel_counts_are_cells_times_anchors_per_cell(shapes):
  cells = [h * w for h, w in shapes]
  fpn, fpn_counts = A.fpn_anchors(shapes)
  assert fpn_counts == tuple(3 * c for c in cells) and fpn.shape == (sum(fpn_counts), 4)
  retina, retina_counts = A.retinanet_anchors(shapes)
  assert retina_counts == tuple(9 * c for c in cells) and retina.shape == (sum(retina_counts), 4)
  yolo = A.yolo_anchors(shapes[0], stride=16)
  assert yolo.shape == (cells[0] * 3, 4)


@given(st.lists(st.integers(1, 6), min_size=2, max_size=4), st.data())
def test_ssd_count_is_cells_times_priors_per_cell(sizes, data):
  ratios = [data.draw(st.sampled_from([(), (2,), (2, 3)])) for _ in sizes]
  priors = A.ssd_priors(sizes, aspect_ratios=ratios)
  assert priors.shape == (sum(f * f * (2 + 2 * len(r)) for f, r in zip(sizes, ratios)), 4)


class AnchorsVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_generators_trace_with_static_shapes(self):
    @self.variant
    def generate():
      grid = A.grid_anchors((4, 6), stride=8, sizes=(16, 32), aspect_ratios=(0.5, 2.0))
      retina, _ = A.retinanet_anchors([(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)])
      return grid, retina, A.yolo_anchors((2, 3), stride=32), A.ssd_priors((3, 1), aspect_ratios=((2,), ()))

    grid, retina, yolo, ssd = generate()
    chex.assert_shape(grid, (4 * 6 * 4, 4))
    chex.assert_shape(retina, ((16 + 4 + 3) * 9, 4))
    chex.assert_shape(yolo, (2 * 3 * 3, 4))
    chex.assert_shape(ssd, (9 * 4 + 1 * 2, 4))
    chex.assert_type([grid, retina, yolo, ssd], jnp.float32)
    np.testing.assert_allclose(grid, numpy_grid_anchors(4, 6, 8, (16, 32), (0.5, 2.0)), rtol=1e-5, atol=1e-4)
