"""Prediction over a split: boxes mapped back to stored pixels and clipped, padding never evaluated; flip test."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.data.loader import make_loader
from jaxdet.data.source import ListSource, make_example
from jaxdet.models.detector import Detections
from jaxdet.models.detectors.centernet import merge_flipped
from jaxdet.train.evaluate import predict_split
from jaxdet.train.parallel import make_mesh
from jaxdet.train.state import predict_step
from tests.train.conftest import tiny_detector

SIZES = [(32, 64), (64, 32), (48, 48)]  # (h, w) of three stored images, letterboxed to 64 x 64


def fixed_predictor(variables, batch):
  """A stand-in for a detector: per image one box at (16, 16, 48, 40), one over the whole input, one empty slot."""
  del variables
  b = batch["image"].shape[0]
  boxes = jnp.array([[16.0, 16.0, 48.0, 40.0], [-20.0, -20.0, 1000.0, 1000.0], [0.0, 0.0, 0.0, 0.0]])
  scores = jnp.array([0.9, 0.5, 0.0])
  return Detections(boxes=jnp.broadcast_to(boxes, (b, 3, 4)), scores=jnp.broadcast_to(scores, (b, 3)),
                    classes=jnp.zeros((b, 3), jnp.int32), valid=jnp.broadcast_to(scores > 0, (b, 3)))


fixed_predictor.fields = ("image",)  # the batch fields it reads, as `make_predict_fn`'s predictors say


def letterbox_inverse(box, h, w, size=64):
  """Stored-image pixels of a box on the letterboxed input, derived by hand: scale s, centred padding."""
  s = min(size / h, size / w)
  tx, ty = (size - w * s) / 2, (size - h * s) / 2
  x1, y1, x2, y2 = (box[0] - tx) / s, (box[1] - ty) / s, (box[2] - tx) / s, (box[3] - ty) / s
  return np.clip([x1, y1, x2, y2], 0, [w, h, w, h])


def test_predict_split_maps_boxes_back_clips_them_and_masks_padding():
  source = ListSource([make_example(np.zeros((*s, 3), np.uint8), np.zeros((0, 4)), [], image_id=10 + i)
                       for i, s in enumerate(SIZES)], ["a"])
  loader = make_loader(source, batch_size=2, image_size=64, train=False, max_boxes=2, shard_index=0, shard_count=1)
  out = list(predict_split(fixed_predictor, None, loader, make_mesh(), show_progress=False))
  assert len(out) == 2  # three images in batches of two: the last slot is padding
  ids = np.concatenate([m["image_id"] for m, _ in out])
  valid = np.concatenate([d["valid"] for _, d in out])
  boxes = np.concatenate([d["boxes"] for _, d in out])
  np.testing.assert_array_equal(ids[:3], [10, 11, 12])
  np.testing.assert_array_equal(valid, [[True, True, False]] * 3 + [[False, False, False]])
  for i, (h, w) in enumerate(SIZES):
    np.testing.assert_allclose(boxes[i, 0], letterbox_inverse([16, 16, 48, 40], h, w), atol=1e-4)
    np.testing.assert_allclose(boxes[i, 1], [0, 0, w, h], atol=1e-4)  # clipped to the stored image


def test_flip_test_merges_the_mirrored_pass():
  detector = tiny_detector()
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3)), jnp.uint8)
  variables = detector.module.init(jax.random.PRNGKey(0), images)
  got = predict_step(variables, {"image": images}, detector=detector, flip_test=True)
  outputs = detector.module.apply(variables, images)
  mirrored = detector.module.apply(variables, images[:, :, ::-1])
  want = detector.postprocess(merge_flipped(outputs, mirrored), image_shape=(64, 64))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  plain = predict_step(variables, {"image": images}, detector=detector)
  assert not np.allclose(plain.scores, got.scores)
