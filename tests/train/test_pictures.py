"""The pictures of an evaluation: the sampled images' detections collected by image id during `evaluate_split`,
drawn into DIR/detections_<split>.png and a TensorBoard image; configured by `num_pictures` (0 = off)."""

import glob
import io

import ml_collections
import numpy as np
from PIL import Image

from jaxdet.data.loader import make_loader
from jaxdet.data.source import ListSource, make_example
from jaxdet.train.evaluate import evaluate_split
from jaxdet.train.parallel import make_mesh
from jaxdet.train.pictures import PictureSampler, make_picture_sampler, write_pictures
from jaxdet.train.writers import MetricWriter
from tests.train.test_evaluate import fixed_predictor, letterbox_inverse
from tests.train.test_writers import images, read_records

SIZES = [(32, 64), (64, 32), (48, 48), (64, 64), (40, 56)]


def make_source():
  examples = [make_example(np.full((*s, 3), 40 * i, np.uint8), [[2, 2, 20, 20]], [0], image_id=100 + i)
              for i, s in enumerate(SIZES)]
  return ListSource(examples, ["thing"])


def evaluate(source, sampler):
  loader = make_loader(source, batch_size=2, image_size=64, train=False, max_boxes=2, shard_index=0, shard_count=1)
  return evaluate_split(fixed_predictor, None, source, loader, make_mesh(), show_progress=False, pictures=sampler)


def test_sampler_keeps_the_first_images_detections_in_stored_pixels():
  source = make_source()
  sampler = PictureSampler(source, 3)
  assert sampler.items() == []  # nothing before an evaluation pass
  evaluator = evaluate(source, sampler)
  assert len(evaluator.results()) == 2 * len(SIZES)  # the evaluation itself is unchanged: every image, 2 boxes
  items = sampler.items()
  assert [it.image_id for it in items] == [100, 101, 102]
  for it, (h, w) in zip(items, SIZES):
    assert it.image.shape == (h, w, 3)
    np.testing.assert_array_equal(it.gt_boxes, [[2, 2, 20, 20]])
    np.testing.assert_array_equal(it.valid, [True, True, False])
    np.testing.assert_allclose(it.boxes[0], letterbox_inverse([16, 16, 48, 40], h, w), atol=1e-4)


def test_sampler_matches_by_image_id_and_skips_padding():
  source = make_source()
  sampler = PictureSampler(source, 2)
  dets = {"boxes": np.zeros((2, 1, 4)), "scores": np.array([[0.5], [0.6]]), "classes": np.zeros((2, 1), int),
          "valid": np.ones((2, 1), bool)}
  sampler.add({"image_id": np.array([101, 100]), "example_valid": np.array([True, False])}, dets)
  assert [(it.image_id, float(it.scores[0])) for it in sampler.items()] == [(101, 0.5)]
  sampler.add({"image_id": np.array([103, 100]), "example_valid": np.array([True, True])}, dets)
  assert [(it.image_id, float(it.scores[0])) for it in sampler.items()] == [(100, 0.6), (101, 0.5)]
  sampler.reset()
  assert sampler.items() == []


def test_write_pictures_writes_the_grid_and_a_tensorboard_image(tmp_path):
  source = make_source()
  sampler = PictureSampler(source, 4, min_side=128, columns=2)
  writer = MetricWriter(tmp_path)
  assert write_pictures(sampler, str(tmp_path), "validation", step=3, writer=writer) is None
  evaluate(source, sampler)
  path = write_pictures(sampler, str(tmp_path), "validation", step=3, writer=writer)
  writer.close()
  assert path == str(tmp_path / "detections_validation.png")
  grid = np.asarray(Image.open(path))
  assert grid.shape[1] >= 2 * 128 and grid.shape[0] >= 2 * 128  # two rows of two pictures, each >= 128 px
  (events,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  step, got = images(read_records(events)[-1])
  height, width, _, png = got["val/detections"]
  assert step == 3 and (height, width) == grid.shape[:2]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), grid)
  assert not glob.glob(str(tmp_path / "*.tmp"))


def test_config_turns_pictures_off_and_old_configs_get_the_default():
  source = make_source()
  old = ml_collections.ConfigDict({"seed": 0})
  sampler = make_picture_sampler(old, source)
  assert len(sampler.examples) == len(SIZES) and sampler.score_threshold == 0.3 and sampler.min_side == 512
  assert make_picture_sampler(ml_collections.ConfigDict({"num_pictures": 0}), source) is None
  two = make_picture_sampler(ml_collections.ConfigDict({"num_pictures": 2, "picture_score_threshold": 0.5}), source)
  assert len(two.examples) == 2 and two.score_threshold == 0.5
