"""Mesh order, batch sharding errors, host-value gathering, and config-to-loader details."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxdet.data.source import ListSource, make_example
from jaxdet.data.transforms import eval_transform
from jaxdet.train import inputs
from jaxdet.train.parallel import gather_host_values, make_mesh, shard_batch


def test_mesh_orders_devices_by_process_and_id():
  mesh = make_mesh(list(reversed(jax.devices())))
  ids = [d.id for d in mesh.devices.ravel()]
  assert ids == sorted(ids)


def test_shard_batch_keeps_values_and_refuses_indivisible_batches():
  mesh = make_mesh()
  batch = {"x": np.arange(8, dtype=np.float32).reshape(4, 2)}
  np.testing.assert_array_equal(shard_batch(batch, mesh)["x"], batch["x"])
  if len(mesh.local_devices) > 1:
    with pytest.raises(ValueError, match="not divisible"):
      shard_batch({"x": np.zeros((len(mesh.local_devices) + 1, 2))}, mesh)


def test_gather_host_values_keeps_int64_ids_on_one_process():
  ids = np.array([2**40 + 3, 7], np.int64)
  out = gather_host_values({"image_id": ids, "frame": np.ones((2, 4), np.float32)})
  assert out["image_id"].dtype == np.int64
  np.testing.assert_array_equal(out["image_id"], ids)


def config(**augment):
  c = ml_collections.ConfigDict()
  c.seed, c.batch_size, c.eval_batch_size = 0, 2, 2
  c.data = ml_collections.ConfigDict(dict(image_size=32, max_boxes=4, mosaic_prob=0.0, multiscale_sizes=(),
                                          multiscale_period=10, worker_count=0, eval_resize="letterbox"))
  c.data.augment = ml_collections.ConfigDict(augment)
  return c


def source():
  rng = np.random.default_rng(0)
  return ListSource([make_example(rng.integers(0, 255, (24, 40, 3)), [[2, 2, 20, 12]], [0], image_id=i + 1)
                     for i in range(4)], ["a"])


def test_empty_scale_range_from_the_command_line_means_letterbox():
  # `--config.data.augment.scale_range=()` is how a command line switches the scale + crop off.
  c = config(flip_prob=0.0, scale_range=(), brightness=0.0, contrast=0.0, saturation=0.0, lighting=0.0)
  src = source()
  train = next(iter(inputs.train_loader(c, src)))
  for image, image_id in zip(train["image"], train["image_id"]):
    np.testing.assert_array_equal(image, eval_transform(src[int(image_id) - 1], 32, mode="letterbox")["image"])
  np.testing.assert_allclose(train["frame"][:, 0], 32 / 40)  # letterboxed: scaled by 32/40, not cropped


def test_global_batch_must_divide_over_devices():
  c = config(flip_prob=0.0)
  c.batch_size = jax.device_count() * 2 + 1
  if jax.device_count() > 1:
    with pytest.raises(ValueError, match="not divisible"):
      inputs.train_loader(c, source())


def test_train_loader_keeps_decoded_examples_without_changing_the_batches():
  class Counting(ListSource):
    reads = 0

    def __getitem__(self, index):
      Counting.reads += 1
      return super().__getitem__(index)

  c = config(flip_prob=0.5, scale_range=(0.6, 1.3), brightness=0.2, contrast=0.0, saturation=0.0, lighting=0.0)
  src = source()
  runs, reads = [], []
  for keep_mib in (0, 1):
    c.data.keep_decoded_mib = keep_mib
    Counting.reads = 0
    it = iter(inputs.train_loader(c, Counting([src[i] for i in range(len(src))], src.class_names)))
    runs.append([next(it) for _ in range(20)])  # 40 images: ten epochs of the 4
    it.close()
    reads.append(Counting.reads)
  # Kept: each example is read in the first epoch (twice at most, when grain's read-ahead threads ask for it at once).
  assert reads[0] >= 40 and 4 <= reads[1] <= 8
  for plain, kept in zip(*runs):
    for key in plain:
      np.testing.assert_array_equal(plain[key], kept[key], err_msg=key)
