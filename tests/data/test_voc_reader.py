"""`VocSource` on VOC folders the tests write: 1-based inclusive -> continuous boxes, difficult flags, bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from jaxdet.data.bad_input import BadInputError
from jaxdet.data.coco import CocoSource, export_coco
from jaxdet.data.source import EXAMPLE_KEYS
from jaxdet.data.voc import VOC_CLASSES, VocSource, voc_image_id
from jaxdet.eval.voc import voc_evaluate

# stem -> (width, height, [(name, xmin, ymin, xmax, ymax, difficult), ...]) in VOC's 1-based inclusive pixels.
SCENES = {
    "000005": (60, 40, [("dog", 1, 2, 30, 40, 0), ("cat", 10, 5, 60, 20, 1)]),
    "000007": (50, 30, [("person", 3, 3, 3, 3, 0)]),  # a one-pixel box: width xmax - xmin + 1 = 1
    "2008_000008": (32, 48, []),  # no objects
}


def _object_xml(name, xmin, ymin, xmax, ymax, difficult=None):
  flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
  return (f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>{flag}"
          f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def write_voc(root, scenes=None, *, split="test", xml_overrides=None):
  """Writes `root/VOC2007/{Annotations, ImageSets/Main, JPEGImages}`; returns the VOC2007 folder."""
  scenes = SCENES if scenes is None else scenes
  voc = os.path.join(root, "VOC2007")
  for sub in ("Annotations", os.path.join("ImageSets", "Main"), "JPEGImages"):
    os.makedirs(os.path.join(voc, sub), exist_ok=True)
  rng = np.random.default_rng(0)
  for stem, (width, height, objects) in scenes.items():
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        os.path.join(voc, "JPEGImages", f"{stem}.jpg"))
    body = "".join(_object_xml(*obj) for obj in objects)
    xml = (f"<annotation><filename>{stem}.jpg</filename><size><width>{width}</width><height>{height}</height>"
           f"<depth>3</depth></size>{body}</annotation>")
    xml = (xml_overrides or {}).get(stem, xml)
    with open(os.path.join(voc, "Annotations", f"{stem}.xml"), "w", encoding="utf-8") as f:
      f.write(xml)
  with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(scenes) + "\n")
  return voc


@pytest.mark.parametrize("use_year", [True, False])
def test_boxes_labels_difficult_and_ids(tmp_path, use_year):
  voc = write_voc(tmp_path)
  source = VocSource(tmp_path, "test", year=2007) if use_year else VocSource(voc, "test")
  assert len(source) == len(SCENES) and list(source.class_names) == list(VOC_CLASSES)
  for k, (stem, (width, height, objects)) in enumerate(SCENES.items()):
    example = source[k]
    assert set(example) == set(EXAMPLE_KEYS)
    # Pixel i (1-based) covers [i - 1, i): an inclusive 1-based span [xmin, xmax] is [xmin - 1, xmax).
    want = np.array([[o[1] - 1, o[2] - 1, o[3], o[4]] for o in objects], np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(example["boxes"], want)
    np.testing.assert_array_equal(example["labels"], [VOC_CLASSES.index(o[0]) for o in objects])
    np.testing.assert_array_equal(example["difficult"], [bool(o[5]) for o in objects])
    assert not example["crowd"].any()
    assert example["image_id"] == int(stem.replace("_", ""))
    with Image.open(os.path.join(voc, "JPEGImages", f"{stem}.jpg")) as image:
      np.testing.assert_array_equal(example["image"], np.asarray(image.convert("RGB")))
    np.testing.assert_array_equal(example["orig_size"], [height, width])
  assert source.skipped == {} and source.clipped == 0


@pytest.mark.parametrize("stem, position, want", [("000005", 0, 5), ("2008_000008", 3, 2008000008),
                                                  ("img_a", 4, 5)])
def test_image_ids(stem, position, want):
  assert voc_image_id(stem, position) == want


def test_widths_are_the_devkit_widths(tmp_path):
  source = VocSource(write_voc(tmp_path), "test")
  boxes = source[1]["boxes"]
  np.testing.assert_array_equal(boxes[:, 2] - boxes[:, 0], [3 - 3 + 1])  # devkit: xmax - xmin + 1


def test_ground_truth_carries_difficult_and_voc_metric_ignores_it(tmp_path):
  source = VocSource(write_voc(tmp_path), "test")
  ground_truth = source.coco_ground_truth()
  assert [a["difficult"] for a in ground_truth["annotations"]] == [0, 1, 0]
  assert [im["id"] for im in ground_truth["images"]] == [5, 7, 2008000008]
  # Perfect detections of the non-difficult objects only: VOC AP is 1 because the difficult cat is ignored.
  detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                for a in ground_truth["annotations"] if not a["difficult"]]
  result = voc_evaluate(ground_truth, detections)
  assert result["AP"][VOC_CLASSES.index("dog") + 1] == 1.0 and result["AP"][VOC_CLASSES.index("person") + 1] == 1.0


def test_export_coco_round_trip_keeps_difficult(tmp_path):
  source = VocSource(write_voc(tmp_path / "voc"), "test")
  path = export_coco(source, tmp_path / "coco", split_name="test")
  reread = CocoSource(path, tmp_path / "coco" / "images" / "test")
  for k in range(len(source)):
    for key in EXAMPLE_KEYS:
      np.testing.assert_array_equal(source[k][key], reread[k][key], err_msg=key)


@pytest.mark.parametrize("obj, want", [(("dog", 0, 5, 10, 20, 0), [0, 4, 10, 20]),
                                       (("dog", 50, 5, 70, 20, 0), [49, 4, 60, 20])])
def test_box_partly_outside_is_clipped_and_counted(tmp_path, obj, want):
  source = VocSource(write_voc(tmp_path, {"000001": (60, 40, [obj])}), "test")
  np.testing.assert_array_equal(source[0]["boxes"], [want])
  assert source.clipped == 1


BAD_OBJECTS = {
    "unknown class": (("unicorn", 1, 1, 5, 5, 0), "unknown category"),
    "xmax before xmin": (("dog", 10, 1, 8, 5, 0), "box with width or height <= 0"),
    "outside": (("dog", 70, 1, 80, 5, 0), "box outside the image"),
}


@pytest.mark.parametrize("case", sorted(BAD_OBJECTS))
def test_bad_object_raises_naming_file_and_object(tmp_path, case):
  obj, reason = BAD_OBJECTS[case]
  voc = write_voc(tmp_path, {"000001": (60, 40, [("cat", 1, 1, 9, 9, 0), obj])})
  with pytest.raises(BadInputError, match=reason) as info:
    VocSource(voc, "test")
  assert os.path.join(voc, "Annotations", "000001.xml") in str(info.value) and "object 1" in str(info.value)
  source = VocSource(voc, "test", on_error="skip")
  assert source.skipped == {reason: 1}
  np.testing.assert_array_equal(source[0]["boxes"], [[0, 0, 9, 9]])


def test_missing_bndbox_field_is_malformed(tmp_path):
  bad = ("<annotation><size><width>60</width><height>40</height></size>"
         "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>abc</xmax></bndbox></object></annotation>")
  voc = write_voc(tmp_path, {"000001": (60, 40, [])}, xml_overrides={"000001": bad})
  with pytest.raises(BadInputError, match=r"000001\.xml: object 0: bndbox"):
    VocSource(voc, "test")
  assert VocSource(voc, "test", on_error="skip").skipped == {"malformed bndbox": 1}


def test_malformed_xml_and_missing_image(tmp_path):
  scenes = {"000001": (60, 40, [("dog", 1, 1, 9, 9, 0)]), "000002": (60, 40, [("cat", 2, 2, 9, 9, None)]),
            "000003": (60, 40, [("cow", 3, 3, 9, 9, 1)])}
  voc = write_voc(tmp_path, scenes, xml_overrides={"000001": "<annotation><object>"})
  os.remove(os.path.join(voc, "JPEGImages", "000003.jpg"))
  with pytest.raises(BadInputError, match=r"000001\.xml: cannot parse"):
    VocSource(voc, "test")
  source = VocSource(voc, "test", on_error="skip")
  assert source.skipped == {"missing or malformed XML": 1, "missing or unreadable image": 1}
  assert len(source) == 1 and source[0]["image_id"] == 2
  assert not source[0]["difficult"].any()  # an absent <difficult> reads as 0


def test_corrupt_image_fails_at_decode_or_is_replaced(tmp_path):
  voc = write_voc(tmp_path)
  path = os.path.join(voc, "JPEGImages", "000005.jpg")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 3])
  with pytest.raises(BadInputError, match=r"000005\.jpg: cannot decode"):
    VocSource(voc, "test")[0]  # pylint: disable=expression-not-assigned
  source = VocSource(voc, "test", on_error="skip")
  assert source[0]["image_id"] == 7 and source.skipped == {"undecodable image": 1}


def test_missing_split_list_names_the_file(tmp_path):
  voc = write_voc(tmp_path)
  with pytest.raises(BadInputError, match=r"ImageSets/Main/val\.txt"):
    VocSource(voc, "val")
