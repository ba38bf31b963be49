"""The `shapes` set: determinism, tight boxes and visible areas, statistics, the tfds round trip, COCO export."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle

import chex
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from PIL import Image

from jaxdet.data.coco import CocoSource, export_coco
from jaxdet.data.shapes import CLASS_NAMES, CONFIGS, SceneSpec, ShapesSource, render_scene
from jaxdet.data.shapes.__main__ import main as shapes_main
from jaxdet.data.shapes.builder import render_example
from jaxdet.data.source import EXAMPLE_KEYS

TINY = next(c for c in CONFIGS if c.name == "tiny")
DEFAULT = next(c for c in CONFIGS if c.name == "default")


def _decode(png: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("config", [TINY, DEFAULT], ids=lambda c: c.name)
@pytest.mark.parametrize("split", ["train", "test"])
def test_same_seed_split_index_gives_identical_bytes(config, split):
  for index in (0, 7):
    a, b = render_example(config, split, index), render_example(config, split, index)
    assert a["image"] == b["image"]
    for key in ("boxes", "labels", "areas", "image_id"):
      assert np.asarray(a[key]).tobytes() == np.asarray(b[key]).tobytes()


def test_index_split_and_seed_each_change_the_image():
  base = _decode(render_example(DEFAULT, "train", 3)["image"])
  others = [render_example(DEFAULT, "train", 4), render_example(DEFAULT, "validation", 3),
            render_example(CONFIGS[0].__class__(name="s1", seed=1), "train", 3)]
  for other in others:
    assert not np.array_equal(base, _decode(other["image"]))


def test_example_does_not_depend_on_generation_order():
  forward = [render_example(TINY, "train", k)["image"] for k in range(6)]
  backward = [render_example(TINY, "train", k)["image"] for k in reversed(range(6))][::-1]
  assert forward == backward


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boxes_tight_around_visible_pixels_and_areas_count_them(size, seed):
  for k in range(8):
    scene = render_scene(np.random.default_rng([seed, 9, k]), SceneSpec(image_size=size))
    n = len(scene.labels)
    assert scene.boxes.shape == (n, 4) and scene.areas.shape == (n,)
    changed = np.any(scene.image != scene.background, axis=-1)
    # Pixels differ from the background exactly where an object is visible.
    np.testing.assert_array_equal(changed, scene.instances >= 0)
    for j in range(n):
      ys, xs = np.nonzero(scene.instances == j)
      want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # continuous: pixel j covers [j, j + 1)
      np.testing.assert_array_equal(scene.boxes[j], want)
      assert scene.areas[j] == len(xs)
      x1, y1, x2, y2 = scene.boxes[j].astype(int)
      assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
      inside = scene.image[y1:y2, x1:x2].astype(int) - scene.background[y1:y2, x1:x2]
      # The object is clearly visible: its pixels are far from the background under them on average.
      assert np.abs(inside[scene.instances[y1:y2, x1:x2] == j]).mean() > 10


@hypothesis.given(seed=st.integers(0, 2**32 - 1), size=st.sampled_from([24, 48, 96]),
                  max_objects=st.integers(1, 12))
def test_every_labelled_object_stays_visible(seed, size, max_objects):
  spec = SceneSpec(image_size=size, max_objects=max_objects)
  scene = render_scene(np.random.default_rng(seed), spec)
  assert len(scene.labels) <= max_objects
  assert set(np.unique(scene.instances).tolist()) - {-1} == set(range(len(scene.labels)))
  assert np.all(scene.areas >= spec.min_pixels)
  counts = np.bincount(scene.instances.ravel() + 1, minlength=len(scene.labels) + 1)[1:]
  np.testing.assert_array_equal(scene.areas, counts)
  assert np.all((scene.boxes >= 0) & (scene.boxes <= size)) and np.all(scene.boxes[:, 2:] > scene.boxes[:, :2])


def test_statistics_of_the_default_spec():
  spec = DEFAULT.scene_spec()
  scenes = [render_scene(np.random.default_rng([0, 0, k]), spec) for k in range(250)]
  labels = np.concatenate([s.labels for s in scenes])
  areas = np.concatenate([s.areas for s in scenes])
  counts = np.array([len(s.labels) for s in scenes])
  # Class balance: each of the 5 classes is about a fifth of the objects.
  share = np.bincount(labels, minlength=len(CLASS_NAMES)) / len(labels)
  assert share.min() > 0.13 and share.max() < 0.27, share
  # Sizes cover COCO's small / medium / large ranges (visible pixel area).
  small, large = np.mean(areas < 32**2), np.mean(areas > 96**2)
  assert small > 0.4 and 1 - small - large > 0.15 and large > 0.005, (small, large)
  # 0..max_objects objects, with some empty images and some full ones.
  assert counts.max() == spec.max_objects and 0.02 < np.mean(counts == 0) < 0.2
  assert np.mean(counts >= 4) > 0.2
  assert areas.min() >= spec.min_pixels
  # Partial occlusion happens: some object's box holds pixels of another object painted over it.
  def occluded(s):
    for j, (x1, y1, x2, y2) in enumerate(s.boxes.astype(int)):
      window = s.instances[y1:y2, x1:x2]
      if np.any((window > j)):
        return True
    return False
  assert np.mean([occluded(s) for s in scenes]) > 0.1


def test_tfds_round_trip(shapes_data_dir):
  source = ShapesSource("validation", config="tiny", data_dir=shapes_data_dir)
  assert len(source) == TINY.num_validation
  assert list(source.class_names) == list(CLASS_NAMES) and list(source.category_ids) == [1, 2, 3, 4, 5]
  for k in range(len(source)):
    example, stored = source[k], render_example(TINY, "validation", k)
    assert set(example) == set(EXAMPLE_KEYS)
    n = len(stored["labels"])
    chex.assert_shape([example["boxes"], example["labels"], example["crowd"], example["difficult"]],
                      [(n, 4), (n,), (n,), (n,)])
    chex.assert_shape([example["orig_size"], example["frame"]], [(2,), (4,)])
    np.testing.assert_array_equal(example["image"], _decode(stored["image"]))
    np.testing.assert_array_equal(example["boxes"], stored["boxes"])
    np.testing.assert_array_equal(example["labels"], stored["labels"])
    assert example["image_id"] == k + 1 and example["image"].shape == (64, 64, 3)
    assert example["boxes"].dtype == np.float32 and example["labels"].dtype == np.int32
    np.testing.assert_array_equal(example["orig_size"], [64, 64])
  assert np.array_equal(source[-1]["image"], source[len(source) - 1]["image"])
  with pytest.raises(IndexError):
    source[len(source)]  # pylint: disable=pointless-statement


def test_ground_truth_areas_are_visible_pixel_counts(shapes_data_dir):
  source = ShapesSource("test", config="tiny", data_dir=shapes_data_dir)
  ground_truth = source.coco_ground_truth()
  assert [im["id"] for im in ground_truth["images"]] == list(range(1, len(source) + 1))
  by_image = {}
  for ann in ground_truth["annotations"]:
    by_image.setdefault(ann["image_id"], []).append(ann)
  for k in range(len(source)):
    stored = render_example(TINY, "test", k)
    anns = by_image.get(k + 1, [])
    assert [a["area"] for a in anns] == stored["areas"].tolist()
    assert [a["category_id"] for a in anns] == (stored["labels"] + 1).tolist()
    np.testing.assert_allclose([a["bbox"] for a in anns] or np.zeros((0, 4)),
                               np.concatenate([stored["boxes"][:, :2], stored["boxes"][:, 2:] - stored["boxes"][:, :2]],
                                              axis=1))
  assert len({a["id"] for a in ground_truth["annotations"]}) == len(ground_truth["annotations"])


def test_second_source_reuses_the_prepared_set(shapes_data_dir):
  ShapesSource("train", config="tiny", data_dir=shapes_data_dir)
  files = sorted((shapes_data_dir / "shapes" / "tiny").rglob("*.array_record*"))
  before = [f.stat().st_mtime_ns for f in files]
  ShapesSource("train", config="tiny", data_dir=shapes_data_dir)
  assert [f.stat().st_mtime_ns for f in files] == before


@pytest.mark.parametrize("split", ["validation", "test"])
def test_export_coco_round_trips_through_coco_source_and_pycocotools(shapes_data_dir, tmp_path, split):
  source = ShapesSource(split, config="tiny", data_dir=shapes_data_dir)
  path = export_coco(source, tmp_path, split_name=split)
  assert path == os.path.join(tmp_path, "annotations", f"instances_{split}.json")
  reread = CocoSource(path, tmp_path / "images" / split)
  assert len(reread) == len(source) and list(reread.class_names) == list(source.class_names)
  for k in range(len(source)):
    a, b = source[k], reread[k]
    for key in EXAMPLE_KEYS:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  want, got = source.coco_ground_truth(), reread.coco_ground_truth()
  assert got["annotations"] == want["annotations"] and got["categories"] == want["categories"]
  coco = pytest.importorskip("pycocotools.coco")
  with contextlib.redirect_stdout(io.StringIO()):
    api = coco.COCO(path)
  assert sorted(api.getImgIds()) == list(range(1, len(source) + 1))
  assert len(api.getAnnIds()) == sum(len(source[k]["boxes"]) for k in range(len(source)))
  for image_id in api.getImgIds():
    info = api.loadImgs(image_id)[0]
    assert os.path.exists(tmp_path / "images" / split / info["file_name"])


def test_cli_generates_and_exports(shapes_data_dir, tmp_path, capsys):
  shapes_main(["--config=tiny", f"--data_dir={shapes_data_dir}", f"--export={tmp_path}", "--splits=test"])
  with open(tmp_path / "annotations" / "instances_test.json", encoding="utf-8") as f:
    exported = json.load(f)
  assert len(exported["images"]) == TINY.num_test
  assert len(os.listdir(tmp_path / "images" / "test")) == TINY.num_test
  assert "exported 12 images of test" in capsys.readouterr().out


def test_sources_pickle_for_loader_workers(shapes_data_dir, tmp_path):
  source = ShapesSource("validation", config="tiny", data_dir=shapes_data_dir)
  coco = CocoSource(export_coco(source, tmp_path, split_name="validation"), tmp_path / "images" / "validation")
  for original in (source, coco):
    copy = pickle.loads(pickle.dumps(original))
    assert len(copy) == len(original)
    for key in EXAMPLE_KEYS:
      np.testing.assert_array_equal(copy[3][key], original[3][key])
