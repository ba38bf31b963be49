"""Selective search: known regions are proposed, each similarity equals its formula, merging equals recomputing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

pytest.importorskip("skimage")

from jaxdet.proposals import selective_search as ss  # noqa: E402


def _blocks_image(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A 64 x 64 image: grey background, four flat rectangles of distinct colours; returns (image, boxes [4, 4])."""
  rng = np.random.default_rng(seed)
  image = np.full((64, 64, 3), 128, np.uint8)
  boxes = np.array([[4, 6, 20, 26], [30, 4, 58, 16], [8, 36, 28, 58], [36, 30, 60, 60]], np.float32)
  colors = [(230, 30, 30), (30, 200, 40), (20, 40, 220), (240, 230, 20)]
  for (x1, y1, x2, y2), c in zip(boxes.astype(int), colors):
    image[y1:y2, x1:x2] = c
  image = np.clip(image.astype(np.int16) + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
  return image, boxes


def _iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("mode", ["single", "fast"])
def test_each_known_region_is_proposed(mode):
  image, boxes = _blocks_image()
  props = ss.selective_search(image, mode=mode, k_scale=1.0, seed=3)
  assert props.dtype == np.float32 and props.ndim == 2 and props.shape[1] == 4
  for box in boxes:
    assert max(_iou(box, p) for p in props) == pytest.approx(1.0), box
  # exact duplicates removed, all boxes inside the image
  assert len(np.unique(props, axis=0)) == len(props)
  assert np.all(props >= 0) and np.all(props[:, 2:] <= 64) and np.all(props[:, 2:] > props[:, :2])


def test_ranking_is_seeded_and_follows_hierarchy_position():
  image, _ = _blocks_image(1)
  a = ss.selective_search(image, mode="fast", k_scale=1.0, seed=5)
  b = ss.selective_search(image, mode="fast", k_scale=1.0, seed=5)
  c = ss.selective_search(image, mode="fast", k_scale=1.0, seed=6)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c) and {tuple(r) for r in a.tolist()} == {tuple(r) for r in c.tolist()}
  # One strategy: the value position * u (position 1 = the whole image, formed last) orders the boxes.
  strategy = ss.Strategy("rgb", 100.0, ss.CTSF)
  got = ss.selective_search(image, strategies=[strategy], k_scale=1.0, seed=9)
  conv = ss.convert_color(image, "rgb")
  labels = ss.segment(conv, k=100.0, min_size=100.0)
  hierarchy = ss.hierarchical_grouping(ss.region_features(conv, labels), ss.adjacent_pairs(labels),
                                       image_size=float(labels.size), similarities=ss.CTSF)
  np.testing.assert_array_equal(hierarchy[-1], [0, 0, 64, 64])  # the last merge covers the image
  values = np.arange(len(hierarchy), 0, -1) * np.random.default_rng(9).uniform(size=len(hierarchy))
  expected = hierarchy[np.argsort(values, kind="stable")]
  _, first = np.unique(expected, axis=0, return_index=True)
  np.testing.assert_array_equal(got, expected[np.sort(first)].astype(np.float32))


def _features_by_hand(image: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """Region histograms written out pixel by pixel (a transcription of sec. 3.2), for the checks below."""
  n = labels.max() + 1
  c = image.shape[-1]
  color = np.zeros((n, c * ss.COLOR_BINS))
  texture = np.zeros((n, c * ss.ORIENTATIONS * ss.TEXTURE_BINS))
  for ch in range(c):
    responses = ss.oriented_gradients(image[..., ch])
    high = responses.max()
    for (i, j) in itertools.product(range(labels.shape[0]), range(labels.shape[1])):
      r = labels[i, j]
      color[r, ch * ss.COLOR_BINS + min(int(image[i, j, ch] * ss.COLOR_BINS), ss.COLOR_BINS - 1)] += 1
      for o in range(ss.ORIENTATIONS):
        b = min(int(responses[o, i, j] / high * ss.TEXTURE_BINS), ss.TEXTURE_BINS - 1)
        texture[r, (ch * ss.ORIENTATIONS + o) * ss.TEXTURE_BINS + b] += 1
  return {"color": color / color.sum(1, keepdims=True), "texture": texture / texture.sum(1, keepdims=True)}


def test_similarities_equal_their_formulas():
  rng = np.random.default_rng(0)
  image = ss.convert_color(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "hsv")
  labels = np.repeat(np.repeat(np.arange(12).reshape(3, 4), 4, axis=0), 4, axis=1)  # a 3 x 4 grid of blocks
  labels[0, 4] = 0  # region 1 loses a pixel to region 0: unequal sizes, a box that is not filled
  f = ss.region_features(image, labels)
  by_hand = _features_by_hand(image, labels)
  np.testing.assert_allclose(f["color"], by_hand["color"], atol=1e-12)
  np.testing.assert_allclose(f["texture"], by_hand["texture"], atol=1e-12)
  size = float(labels.size)
  for i, j in [(0, 1), (0, 4), (5, 11), (2, 3)]:
    s_color = sum(min(a, b) for a, b in zip(by_hand["color"][i], by_hand["color"][j]))
    s_texture = sum(min(a, b) for a, b in zip(by_hand["texture"][i], by_hand["texture"][j]))
    ri, rj = np.argwhere(labels == i), np.argwhere(labels == j)
    s_size = 1 - (len(ri) + len(rj)) / size
    both = np.concatenate([ri, rj])
    bb = (both[:, 0].max() + 1 - both[:, 0].min()) * (both[:, 1].max() + 1 - both[:, 1].min())
    s_fill = 1 - (bb - len(ri) - len(rj)) / size
    for kind, want in [("color", s_color), ("texture", s_texture), ("size", s_size), ("fill", s_fill)]:
      assert ss.similarity(f, i, j, image_size=size, kinds=(kind,)) == pytest.approx(want, abs=1e-12), kind
    assert ss.similarity(f, i, j, image_size=size, kinds=ss.CTSF) == pytest.approx(
        s_color + s_texture + s_size + s_fill, abs=1e-12)


def test_merged_features_equal_the_union_recomputed():
  image, _ = _blocks_image(2)
  conv = ss.convert_color(image, "lab")
  labels = ss.segment(conv, k=30.0, min_size=30.0)
  f = ss.region_features(conv, labels)
  pairs = ss.adjacent_pairs(labels)
  i, j = pairs[0]
  si, sj = f["size"][i], f["size"][j]
  merged_color = (si * f["color"][i] + sj * f["color"][j]) / (si + sj)
  union = np.where(labels == j, i, labels)
  _, union = np.unique(union, return_inverse=True)
  union = union.reshape(labels.shape)
  g = ss.region_features(conv, union)
  k = union[labels == i][0]
  np.testing.assert_allclose(merged_color, g["color"][k], atol=1e-12)
  np.testing.assert_allclose((si * f["texture"][i] + sj * f["texture"][j]) / (si + sj), g["texture"][k], atol=1e-12)


def test_adjacent_pairs_and_grouping_cover_all_regions():
  labels = np.array([[0, 0, 1], [2, 2, 1], [3, 3, 3]])
  np.testing.assert_array_equal(ss.adjacent_pairs(labels), [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]])
  image, _ = _blocks_image(3)
  conv = ss.convert_color(image, "hsv")
  lab = ss.segment(conv, k=50.0, min_size=50.0)
  boxes = ss.hierarchical_grouping(ss.region_features(conv, lab), ss.adjacent_pairs(lab), image_size=float(lab.size),
                                   similarities=ss.TSF)
  r = lab.max() + 1
  assert len(boxes) == 2 * r - 1  # a connected image merges down to one region


def test_modes_and_bad_input():
  assert len(ss.mode_strategies("fast")) == 8 and len(ss.mode_strategies("quality")) == 80
  assert ss.resolve_k_scale("linear", (128, 128)) == pytest.approx(128 / np.sqrt(500 * 375))
  with pytest.raises(ValueError, match="mode"):
    ss.mode_strategies("slow")
  with pytest.raises(ValueError, match="uint8"):
    ss.selective_search(np.zeros((8, 8, 3), np.float32))
  for space in ss.COLOR_SPACES:
    out = ss.convert_color(np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8), space)
    assert out.shape[:2] == (5, 6) and out.min() >= 0 and out.max() <= 1, space


def _grouping_by_hand(features, pairs, *, image_size, similarities):
  """The greedy loop of sec. 3.1 written plainly: rescan every adjacent pair for the most similar at each step."""
  f = {k: list(v) for k, v in features.items()}
  adjacent = {tuple(p) for p in pairs.tolist()}
  alive = set(range(len(f["size"])))
  boxes = [np.asarray(b) for b in f["box"]]
  while adjacent:
    def score(p):
      g = {k: np.asarray(v) for k, v in f.items()}
      return ss.similarity(g, p[0], p[1], image_size=image_size, kinds=similarities)
    i, j = max(sorted(adjacent), key=score)  # ties: the first pair in sorted order, as the implementation
    t = len(f["size"])
    si, sj = f["size"][i], f["size"][j]
    for key in ("color", "texture"):
      f[key].append((si * f[key][i] + sj * f[key][j]) / (si + sj))
    f["size"].append(si + sj)
    box = np.array([min(f["box"][i][0], f["box"][j][0]), min(f["box"][i][1], f["box"][j][1]),
                    max(f["box"][i][2], f["box"][j][2]), max(f["box"][i][3], f["box"][j][3])])
    f["box"].append(box)
    boxes.append(box)
    neighbours = {a if b in (i, j) else b for a, b in adjacent if a in (i, j) or b in (i, j)} - {i, j}
    adjacent = {p for p in adjacent if i not in p and j not in p} | {(n, t) for n in neighbours}
    alive -= {i, j}
    alive.add(t)
  return np.array(boxes)


@pytest.mark.parametrize("similarities", [ss.CTSF, ss.TSF, ("fill", "size")])
def test_grouping_matches_the_plain_greedy_loop(similarities):
  image, _ = _blocks_image(4)
  conv = ss.convert_color(image, "hsv")
  labels = ss.segment(conv, k=20.0, min_size=20.0)
  features = ss.region_features(conv, labels)
  pairs = ss.adjacent_pairs(labels)
  got = ss.hierarchical_grouping({k: v.copy() for k, v in features.items()}, pairs, image_size=float(labels.size),
                                 similarities=similarities)
  want = _grouping_by_hand(features, pairs, image_size=float(labels.size), similarities=similarities)
  assert len(features["size"]) > 5
  np.testing.assert_array_equal(got, want)
