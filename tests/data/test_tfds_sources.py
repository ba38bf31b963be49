"""`TfdsSource` on tfds' `voc/2007` and `coco/2017`, prepared by tfds' own builder code, and under `mock_data`.

TensorFlow is not installed here. tfds' VOC and COCO builders prepare data with TensorFlow only for two small things
— VOC opens files with `tf.io.gfile.GFile`, COCO's feature spec names `tf.int64` — so these tests stand in `open`
and `np.int64` for them, run tfds' real `_generate_examples` on folders the tests write, and read the prepared
array_record files back through `TfdsSource` (which needs no TensorFlow) to compare with `VocSource` / `CocoSource`
on the very same folders.
"""

from __future__ import annotations

import io
import json
import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

import tensorflow_datasets as tfds
from tensorflow_datasets.object_detection import coco as tfds_coco
from tensorflow_datasets.object_detection import voc as tfds_voc

from jaxdet.data.coco import CocoSource
from jaxdet.data.source import EXAMPLE_KEYS
from jaxdet.data.tfds_sources import COCO_CATEGORY_IDS, TfdsSource, pixel_boxes
from jaxdet.data.voc import VOC_CLASSES, VocSource
from tests.data.test_voc_reader import SCENES, write_voc


def _by_image_id(source):
  return {int(ex["image_id"]): ex for ex in (source[k] for k in range(len(source)))}


def _assert_same_examples(a, b, *, flags):
  # tfds stores examples shuffled by key, so compare image by image id, not by position.
  a, b = _by_image_id(a), _by_image_id(b)
  assert sorted(a) == sorted(b)
  for image_id, x in a.items():
    y = b[image_id]
    assert set(x) == set(EXAMPLE_KEYS)
    for key in ("image", "labels", "image_id", "orig_size", "frame") + flags:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)
    np.testing.assert_array_equal(x["boxes"], y["boxes"])  # exact: tfds' float32 noise is rounded away


@pytest.mark.parametrize("one_based", [False, True])
def test_pixel_boxes(one_based):
  rng = np.random.default_rng(0)
  height, width = 37, 91
  xyxy = np.sort(rng.integers(1, 37, (20, 2, 2)), axis=1).transpose(0, 2, 1).reshape(20, 4).astype(np.float64)
  xyxy[:, 2:] += 1
  normalised = np.stack([xyxy[:, 1] / height, xyxy[:, 0] / width, xyxy[:, 3] / height, xyxy[:, 2] / width], 1)
  got = pixel_boxes(normalised.astype(np.float32), height=height, width=width, one_based=one_based)
  want = xyxy - (np.array([1, 1, 0, 0]) if one_based else 0)
  np.testing.assert_array_equal(got, np.clip(want, 0, [width, height, width, height]).astype(np.float32))
  assert pixel_boxes(np.zeros((0, 4), np.float32), height=3, width=3, one_based=one_based).shape == (0, 4)


@pytest.fixture(scope="module")
def tfds_voc_2007(tmp_path_factory):
  """Returns `(VOC folder, tfds data dir)`: VOC2007 `test` written here, prepared by tfds' own VOC builder."""
  root = tmp_path_factory.mktemp("voc")
  voc = write_voc(root / "VOCdevkit")

  class Voc(tfds_voc.Voc, skip_registration=True):
    code_path = None  # no checksums beside this test's code

    def _split_generators(self, dl_manager):
      return {"test": self._generate_examples(data_path=str(root), set_name="test")}

  shim = types.SimpleNamespace(io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=open)))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds_voc, "tf", shim)
    Voc(config="2007", data_dir=str(root / "tfds"), file_format="array_record").download_and_prepare()
  return voc, root / "tfds"


def test_voc_2007_equals_voc_source_on_the_same_files(tfds_voc_2007):
  voc, data_dir = tfds_voc_2007
  source = TfdsSource("voc/2007", "test", data_dir=data_dir)
  assert list(source.class_names) == list(VOC_CLASSES) and list(source.category_ids) == list(range(1, 21))
  _assert_same_examples(source, VocSource(voc, "test"), flags=("difficult", "crowd"))
  assert sorted(_by_image_id(source)) == sorted(int(s.replace("_", "")) for s in SCENES)
  want = VocSource(voc, "test").coco_ground_truth()
  got = source.coco_ground_truth()
  assert sorted(got["images"], key=lambda im: im["id"]) == [
      {k: v for k, v in im.items() if k != "file_name"} for im in sorted(want["images"], key=lambda im: im["id"])]
  fields = ("image_id", "category_id", "bbox", "area", "iscrowd", "difficult")  # ids are numbered in read order
  def key(ann):
    return ann["image_id"], ann["bbox"]
  assert [{f: a[f] for f in fields} for a in sorted(got["annotations"], key=key)] == [
      {f: a[f] for f in fields} for a in sorted(want["annotations"], key=key)]
  assert "tensorflow" not in sys.modules


def _write_coco_2017(root):
  """Writes `root/annotations/instances_val2017.json` + `root/val2017/*.jpg` with COCO's 80 category ids."""
  rng = np.random.default_rng(1)
  images = [{"id": 139, "file_name": "000000000139.jpg", "height": 48, "width": 64},
            {"id": 285, "file_name": "000000000285.jpg", "height": 40, "width": 40},
            {"id": 632, "file_name": "000000000632.jpg", "height": 30, "width": 50}]  # no annotations
  annotations = [
      {"id": 1001, "image_id": 139, "category_id": 90, "bbox": [1.25, 2.5, 30.07, 20.93], "area": 400.7,
       "iscrowd": 0},
      {"id": 1002, "image_id": 139, "category_id": 1, "bbox": [10.0, 0.0, 54.0, 48.0], "area": 2000.0, "iscrowd": 1},
      {"id": 1003, "image_id": 285, "category_id": 44, "bbox": [0.51, 7.49, 12.0, 3.33], "area": 35.2,
       "iscrowd": 0},
  ]
  categories = [{"id": c, "name": f"class{c}", "supercategory": "x"} for c in COCO_CATEGORY_IDS]
  os.makedirs(root / "annotations")
  os.makedirs(root / "val2017")
  for im in images:
    Image.fromarray(rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)).save(
        root / "val2017" / im["file_name"], quality=90)
  path = root / "annotations" / "instances_val2017.json"
  path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
  return path


@pytest.fixture(scope="module")
def tfds_coco_2017(tmp_path_factory):
  """Returns `(annotation file, image dir, tfds data dir)`: COCO val2017 written here, prepared by tfds' builder."""
  root = tmp_path_factory.mktemp("coco")
  path = _write_coco_2017(root)

  class Coco(tfds_coco.Coco, skip_registration=True):
    code_path = None

    def _split_generators(self, dl_manager):
      return {"validation": self._generate_examples(
          image_dir=str(root), annotation_dir=str(root), split_name="val2017",
          annotation_type=tfds_coco.AnnotationType.BBOXES, panoptic_dir=None)}

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds_coco, "tf", types.SimpleNamespace(int64=np.int64))
    Coco(config="2017", data_dir=str(root / "tfds"), file_format="array_record").download_and_prepare()
  return path, root / "val2017", root / "tfds"


def test_coco_2017_equals_coco_source_on_the_same_files(tfds_coco_2017):
  path, image_dir, data_dir = tfds_coco_2017
  source, reference = TfdsSource("coco/2017", "validation", data_dir=data_dir), CocoSource(path, image_dir)
  assert list(source.category_ids) == list(reference.category_ids) == list(COCO_CATEGORY_IDS)
  assert list(source.class_names) == list(reference.class_names)
  _assert_same_examples(source, reference, flags=("crowd", "difficult"))
  assert _by_image_id(source)[139]["crowd"].tolist() == [False, True]
  got, want = source.coco_ground_truth(), reference.coco_ground_truth()
  sizes = sorted((im["id"], im["height"], im["width"]) for im in got["images"])
  assert sizes == sorted((im["id"], im["height"], im["width"]) for im in want["images"])
  got_anns, want_anns = (sorted(g["annotations"], key=lambda a: a["id"]) for g in (got, want))
  fields = ("id", "image_id", "category_id", "iscrowd")
  assert [{k: a[k] for k in fields} for a in got_anns] == [{k: a[k] for k in fields} for a in want_anns]
  np.testing.assert_allclose([a["bbox"] for a in got_anns], [a["bbox"] for a in want_anns], atol=1e-5)
  assert [a["area"] for a in got_anns] == [int(a["area"]) for a in want_anns]  # tfds stores it truncated
  assert "tensorflow" not in sys.modules


def _records(name, split, decoders):
  """Records as tfds would serve them for `name`: two images, one with objects (VOC numbers are 1-based)."""
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, (20, 40, 3), dtype=np.uint8), rng.integers(0, 256, (10, 16, 3), dtype=np.uint8)]
  # Normalised [ymin, xmin, ymax, xmax]: pixels (x1, y1, x2, y2) = (10, 5, 30, 20) and (0, 0, 40, 20).
  bbox = np.array([[0.25, 0.25, 1.0, 0.75], [0.0, 0.0, 1.0, 1.0]], np.float32)
  objects = [{"bbox": bbox, "label": np.array([3, 17]), "is_difficult": np.array([True, False]),
              "is_crowd": np.array([False, True]), "id": np.array([7, 8]), "area": np.array([250, 800])},
             {"bbox": np.zeros((0, 4), np.float32), "label": np.zeros(0, np.int64), "is_difficult": np.zeros(0, bool),
              "is_crowd": np.zeros(0, bool), "id": np.zeros(0, np.int64), "area": np.zeros(0, np.int64)}]
  skip = decoders is not None and isinstance(decoders.get("image"), tfds.decode.SkipDecoding)
  records = []
  for k, (image, objs) in enumerate(zip(images, objects)):
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="PNG")
    records.append({"image": encoded.getvalue() if skip else image, "objects": objs,
                    "image/filename": f"00000{k + 1}.jpg".encode(), "image/id": 100 + k})
  return records


@pytest.mark.parametrize("name, split", [("voc/2007", "test"), ("coco/2017", "validation")])
def test_conversion_under_mock_data(monkeypatch, name, split):
  if name.startswith("coco"):
    monkeypatch.setattr(tfds_coco, "tf", types.SimpleNamespace(int64=np.int64))  # its feature spec only
  def as_data_source(self, split, decoders=None, **kwargs):
    del self, kwargs
    return _records(name, split, decoders)
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    source = TfdsSource(name, split)
  voc = name.startswith("voc")
  assert len(source) == 2
  example = source[0]
  np.testing.assert_array_equal(example["boxes"], [[9, 4, 30, 20], [0, 0, 40, 20]] if voc else
                                [[10, 5, 30, 20], [0, 0, 40, 20]])
  np.testing.assert_array_equal(example["labels"], [3, 17])
  np.testing.assert_array_equal(example["difficult"], [True, False] if voc else [False, False])
  np.testing.assert_array_equal(example["crowd"], [False, False] if voc else [False, True])
  assert example["image_id"] == (1 if voc else 100)
  assert source[1]["boxes"].shape == (0, 4)
  ground_truth = source.coco_ground_truth()
  assert [(im["height"], im["width"]) for im in ground_truth["images"]] == [(20, 40), (10, 16)]
  ids = [a["category_id"] for a in ground_truth["annotations"]]
  assert ids == ([4, 18] if voc else [COCO_CATEGORY_IDS[3], COCO_CATEGORY_IDS[17]])
  if voc:
    assert [a["difficult"] for a in ground_truth["annotations"]] == [1, 0]
  else:
    assert [(a["id"], a["area"], a["iscrowd"]) for a in ground_truth["annotations"]] == [(7, 250, 0), (8, 800, 1)]


def test_other_datasets_are_refused():
  with pytest.raises(ValueError, match="coco/<year> and voc/<year>"):
    TfdsSource("mnist", "train")
  with pytest.raises(ValueError, match="coco/<year> and voc/<year>"):
    TfdsSource("coco/2017_panoptic", "train")
