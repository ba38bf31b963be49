"""`CocoSource` on COCO folders the tests write: parsing against pycocotools, clipping, every bad-input rule."""

from __future__ import annotations

import contextlib
import io
import json
import os

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from PIL import Image

from jaxdet.data.bad_input import BadInputError, check_box
from jaxdet.data.coco import CocoSource, export_coco
from jaxdet.data.source import EXAMPLE_KEYS, ListSource, make_example

CATEGORIES = [{"id": 12, "name": "kite"}, {"id": 3, "name": "car"}, {"id": 7, "name": "train"}]  # unsorted ids


def write_coco(root, *, images=None, annotations=None, categories=CATEGORIES, seed=0):
  """Writes a COCO folder under `root` (PNG images of the given sizes); returns (json path, image dir)."""
  rng = np.random.default_rng(seed)
  if images is None:
    images = [{"id": 5, "file_name": "a.png", "height": 40, "width": 60},
              {"id": 9, "file_name": "sub/b.png", "height": 32, "width": 32},
              {"id": 11, "file_name": "c.png", "height": 20, "width": 30}]  # c has no annotations
  if annotations is None:
    annotations = [
        {"id": 1, "image_id": 5, "category_id": 3, "bbox": [1.5, 2.25, 10.0, 20.5], "area": 150.0, "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 12, "bbox": [30, 0, 30, 40], "area": 900.0, "iscrowd": 1},
        {"id": 7, "image_id": 9, "category_id": 7, "bbox": [0.0, 0.0, 32.0, 32.0], "area": 1000.0, "iscrowd": 0},
        {"id": 8, "image_id": 5, "category_id": 7, "bbox": [12.75, 5.0, 4.5, 3.0], "area": 12.0, "iscrowd": 0},
    ]
  image_dir = os.path.join(root, "images")
  for im in images:
    path = os.path.join(image_dir, im["file_name"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "L" if im["id"] == 9 else "RGB"  # a grey image, as COCO has
    shape = (im["height"], im["width"]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
  path = os.path.join(root, "instances.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
  return path, image_dir


def _pycocotools(path):
  coco = pytest.importorskip("pycocotools.coco")
  with contextlib.redirect_stdout(io.StringIO()):
    return coco.COCO(path)


@pytest.mark.parametrize("check_images", [True, False])
def test_examples_match_pycocotools(tmp_path, check_images):
  path, image_dir = write_coco(tmp_path)
  source = CocoSource(path, image_dir, check_images=check_images)
  api = _pycocotools(path)
  cat_ids = sorted(api.getCatIds())
  assert list(source.category_ids) == cat_ids == [3, 7, 12]
  assert list(source.class_names) == [api.loadCats(c)[0]["name"] for c in cat_ids]
  assert len(source) == len(api.getImgIds())
  for k in range(len(source)):
    example = source[k]
    assert set(example) == set(EXAMPLE_KEYS)
    info = api.loadImgs(int(example["image_id"]))[0]
    anns = api.loadAnns(api.getAnnIds(imgIds=info["id"]))
    want = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                     for a in anns], np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(example["boxes"], want)
    np.testing.assert_array_equal(example["labels"], [cat_ids.index(a["category_id"]) for a in anns])
    np.testing.assert_array_equal(example["crowd"], [bool(a["iscrowd"]) for a in anns])
    assert example["image"].shape == (info["height"], info["width"], 3) and example["image"].dtype == np.uint8
    np.testing.assert_array_equal(example["orig_size"], [info["height"], info["width"]])
    np.testing.assert_array_equal(example["frame"], [1, 1, 0, 0])
  assert source.skipped == {} and source.clipped == 0


def test_image_without_boxes_is_a_valid_example(tmp_path):
  source = CocoSource(*write_coco(tmp_path))
  empty = source[2]
  assert empty["image_id"] == 11 and empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_ground_truth_is_the_json_own(tmp_path):
  path, image_dir = write_coco(tmp_path)
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  assert CocoSource(path, image_dir).coco_ground_truth() == data


@pytest.mark.parametrize("bbox, want", [
    ([-2.0, 5.0, 10.0, 10.0], [0.0, 5.0, 8.0, 15.0]),
    ([50.0, 30.0, 20.0, 20.0], [50.0, 30.0, 60.0, 40.0]),
    ([-1.0, -1.0, 70.0, 50.0], [0.0, 0.0, 60.0, 40.0]),
])
def test_box_partly_outside_is_clipped_and_counted(tmp_path, bbox, want):
  images = [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}]
  anns = [{"id": 4, "image_id": 1, "category_id": 3, "bbox": bbox, "area": 1.0, "iscrowd": 0}]
  source = CocoSource(*write_coco(tmp_path, images=images, annotations=anns))
  np.testing.assert_array_equal(source[0]["boxes"], [want])
  assert source.clipped == 1 and source.skipped == {}
  assert source.coco_ground_truth()["annotations"][0]["bbox"] == bbox  # evaluation sees the file's own box


@hypothesis.given(box=st.lists(st.floats(-50, 150) | st.sampled_from([float("nan"), float("inf")]), min_size=4, max_size=4),
                  width=st.integers(1, 100), height=st.integers(1, 100))
def test_check_box_keeps_only_boxes_overlapping_the_image(box, width, height):
  problem, clipped, was_clipped = check_box(box, width=width, height=height)
  x1, y1, x2, y2 = box
  overlaps = min(x2, width) > max(x1, 0) and min(y2, height) > max(y1, 0)
  assert (problem is None) == (np.all(np.isfinite(box)) and x2 > x1 and y2 > y1 and overlaps)
  if problem is None:
    want = (max(x1, 0), max(y1, 0), min(x2, width), min(y2, height))
    assert clipped == want and was_clipped == (want != tuple(box))
    assert clipped[2] > clipped[0] and clipped[3] > clipped[1]


def _ann(ann_id, **fields):
  return dict({"id": ann_id, "image_id": 5, "category_id": 3, "bbox": [1.0, 1.0, 5.0, 5.0], "area": 25.0,
               "iscrowd": 0}, **fields)


BAD_ANNOTATIONS = {
    "zero width": (_ann(41, bbox=[3.0, 3.0, 0.0, 5.0]), "box with width or height <= 0"),
    "negative height": (_ann(42, bbox=[3.0, 3.0, 5.0, -1.0]), "box with width or height <= 0"),
    "outside right": (_ann(43, bbox=[60.0, 3.0, 5.0, 5.0]), "box outside the image"),
    "outside above": (_ann(44, bbox=[3.0, -9.0, 5.0, 9.0]), "box outside the image"),
    "nan": (_ann(45, bbox=[float("nan"), 3.0, 5.0, 5.0]), "non-finite box"),
    "unknown category": (_ann(46, category_id=99), "unknown category id"),
    "unknown image": (_ann(47, image_id=1234), "unknown image id"),
    "malformed bbox": (_ann(48, bbox=[1.0, 2.0, 3.0]), "malformed bbox"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_raises_naming_file_and_annotation_id(tmp_path, case):
  bad, _ = BAD_ANNOTATIONS[case]
  path, image_dir = write_coco(tmp_path, annotations=[_ann(1), bad])
  with pytest.raises(BadInputError) as info:
    CocoSource(path, image_dir)
  assert path in str(info.value) and f"annotation id {bad['id']}" in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_is_skipped_and_counted(tmp_path, case, caplog):
  bad, reason = BAD_ANNOTATIONS[case]
  path, image_dir = write_coco(tmp_path, annotations=[_ann(1), bad, _ann(2, bbox=[10.0, 10.0, 4.0, 4.0])])
  source = CocoSource(path, image_dir, on_error="skip")
  assert source.skipped == {reason: 1}
  np.testing.assert_array_equal(source[0]["boxes"], [[1, 1, 6, 6], [10, 10, 14, 14]])
  assert [a["id"] for a in source.coco_ground_truth()["annotations"]] == [1, 2]
  assert any(reason in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def _corrupt(path):
  with open(path, "wb") as f:
    f.write(b"not an image at all")


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])  # the header still reads; decoding fails


@pytest.mark.parametrize("damage, reason", [(os.remove, "missing or unreadable image"),
                                            (_corrupt, "missing or unreadable image")])
def test_missing_or_corrupt_image(tmp_path, damage, reason):
  path, image_dir = write_coco(tmp_path)
  damage(os.path.join(image_dir, "sub", "b.png"))
  with pytest.raises(BadInputError, match=r"image id 9: .*sub/b\.png") as info:
    CocoSource(path, image_dir)
  assert path in str(info.value)
  source = CocoSource(path, image_dir, on_error="skip")
  # The image and its one annotation are left out; the others are served in order.
  assert source.skipped == {reason: 1, "annotation of a skipped image": 1}
  assert [int(source[k]["image_id"]) for k in range(len(source))] == [5, 11]
  assert {im["id"] for im in source.coco_ground_truth()["images"]} == {5, 11}
  assert 7 not in {a["id"] for a in source.coco_ground_truth()["annotations"]}


def test_image_that_fails_to_decode_later(tmp_path, caplog):
  path, image_dir = write_coco(tmp_path)
  _truncate(os.path.join(image_dir, "a.png"))
  with pytest.raises(BadInputError, match=r"image id 5: cannot decode .*a\.png"):
    CocoSource(path, image_dir)[0]  # pylint: disable=expression-not-assigned
  source = CocoSource(path, image_dir, on_error="skip")
  assert int(source[0]["image_id"]) == 9  # the next decodable image is served instead
  assert source.skipped == {"undecodable image": 1}
  assert any("a.png" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


@pytest.mark.parametrize("text", ['{"images": [', "[1, 2]", '{"images": [], "categories": []}', ""])
def test_malformed_json_raises_naming_the_file(tmp_path, text):
  path = tmp_path / "instances.json"
  path.write_text(text)
  for on_error in ("raise", "skip"):  # nothing to skip to: the whole file is unusable
    with pytest.raises(BadInputError, match=str(path)):
      CocoSource(path, tmp_path, on_error=on_error)


def test_on_error_must_be_raise_or_skip(tmp_path):
  with pytest.raises(ValueError, match="on_error"):
    CocoSource(*write_coco(tmp_path), on_error="ignore")


def test_export_keeps_crowd_and_difficult_flags(tmp_path):
  rng = np.random.default_rng(0)
  examples = [make_example(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8),
                           [[1.0, 2.0, 10.0, 12.0], [0.5, 0.5, 30.25, 20.0]], [1, 0], image_id=42,
                           crowd=[True, False], difficult=[False, True]),
              make_example(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), np.zeros((0, 4)), [], image_id=3)]
  source = ListSource(examples, ["a", "b"])

  class WithDifficult(ListSource):
    def coco_ground_truth(self):
      ground_truth = super().coco_ground_truth()
      flags = [f for ex in examples for f in ex["difficult"].tolist()]
      for ann, flag in zip(ground_truth["annotations"], flags):
        ann["difficult"] = int(flag)
      return ground_truth

  path = export_coco(WithDifficult(examples, ["a", "b"]), tmp_path, split_name="val")
  reread = CocoSource(path, tmp_path / "images" / "val")
  for k in range(2):
    for key in EXAMPLE_KEYS:
      np.testing.assert_array_equal(source[k][key], reread[k][key], err_msg=key)
