"""The grain loader: fixed shapes and masks, exact eval passes, multi-scale, sharding, determinism and resume."""

from __future__ import annotations

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxdet.data.loader import collate, make_loader, multiscale_size
from jaxdet.data.source import ListSource
from jaxdet.data.transforms import Augment, eval_transform
from tests.data.synthetic import assert_boxes_match_pixels, painted_example, painted_source

SOURCE = painted_source(12, seed=0, height=72, width=96, boxes_per_image=5)
NO_COLOR = Augment(brightness=0, contrast=0, saturation=0, lighting=0)


def _take(loader, n):
  it = iter(loader)
  batches = [next(it) for _ in range(n)]
  it.close()
  return batches


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_have_fixed_shapes_dtypes_and_masks():
  loader = make_loader(SOURCE, batch_size=3, image_size=(48, 64), train=True, max_boxes=8, seed=0, mosaic_prob=0.5,
                       shard_index=0, shard_count=1)
  for batch in _take(loader, 5):
    assert batch["image"].shape == (3, 48, 64, 3) and batch["image"].dtype == np.uint8
    want = {"boxes": ((3, 8, 4), np.float32), "labels": ((3, 8), np.int32), "crowd": ((3, 8), bool),
            "difficult": ((3, 8), bool), "valid": ((3, 8), bool), "image_id": ((3,), np.int64),
            "orig_size": ((3, 2), np.int32), "frame": ((3, 4), np.float32), "example_valid": ((3,), bool),
            "num_truncated": ((3,), np.int32)}
    for key, (shape, dtype) in want.items():
      assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert batch["example_valid"].all()
    # Valid slots come first; padded slots are zeros.
    n = batch["valid"].sum(1)
    np.testing.assert_array_equal(batch["valid"], np.arange(8)[None] < n[:, None])
    assert not batch["boxes"][~batch["valid"]].any() and not batch["labels"][~batch["valid"]].any()
    assert not (batch["crowd"] | batch["difficult"])[~batch["valid"]].any()


@pytest.mark.parametrize("mosaic_prob", [0.0, 1.0])
def test_train_batches_keep_boxes_on_their_pixels(mosaic_prob):
  # With Mosaic, four sources with disjoint colours: Mosaic takes three examples other than the first, so every
  # colour appears once per output image.
  rng = np.random.default_rng(1)
  colors = rng.permutation(16).reshape(4, 4)
  examples = [painted_example(rng, height=72, width=96, colors=colors[i % 4], image_id=i) for i in range(4)]
  source = ListSource(examples, [str(k) for k in range(19)]) if mosaic_prob else SOURCE
  loader = make_loader(source, batch_size=2, image_size=64, train=True, max_boxes=20, seed=3, augment=NO_COLOR,
                       mosaic_prob=mosaic_prob, multiscale_sizes=(48, 64, 80), multiscale_period=2,
                       shard_index=0, shard_count=1)
  for batch in _take(loader, 6):
    for i in range(2):
      valid = batch["valid"][i]
      assert_boxes_match_pixels(batch["image"][i], batch["boxes"][i][valid], batch["labels"][i][valid])
      assert mosaic_prob == 0 or len(set(batch["labels"][i][valid].tolist())) == valid.sum()


def test_images_with_more_than_max_boxes_are_truncated_and_counted():
  rng = np.random.default_rng(2)
  examples = [painted_example(rng, height=96, width=128, colors=rng.choice(19, 12, replace=False), image_id=i, grid=4,
                              margin=3) for i in range(3)]
  source = ListSource(examples, [str(k) for k in range(19)])
  batch = _take(make_loader(source, batch_size=3, image_size=96, train=False, max_boxes=5, shard_index=0,
                            shard_count=1), 1)[0]
  np.testing.assert_array_equal(batch["num_truncated"], [7, 7, 7])
  assert batch["valid"].all()
  for i, ex in enumerate(examples):
    want = eval_transform(ex, 96)
    np.testing.assert_allclose(batch["boxes"][i], want["boxes"][:5])
    np.testing.assert_array_equal(batch["labels"][i], want["labels"][:5])
  roomy = _take(make_loader(source, batch_size=3, image_size=96, train=False, max_boxes=12, shard_index=0,
                            shard_count=1), 1)[0]
  assert not roomy["num_truncated"].any() and roomy["valid"].all()


@pytest.mark.parametrize("num, batch_size, hosts", [(11, 4, 1), (11, 4, 3), (5, 8, 2), (12, 3, 4), (7, 2, 7)])
def test_eval_pass_covers_every_example_exactly_once(num, batch_size, hosts):
  source = painted_source(num, seed=4, height=40, width=56, boxes_per_image=3)
  seen, counts = [], []
  for host in range(hosts):
    loader = make_loader(source, batch_size=batch_size, image_size=(32, 48), train=False, max_boxes=4, seed=0,
                         shard_index=host, shard_count=hosts)
    batches = list(loader)
    counts.append(len(batches))
    assert len(batches) == loader.num_batches
    ids = np.concatenate([b["image_id"] for b in batches])
    ok = np.concatenate([b["example_valid"] for b in batches])
    expected = [int(source[i]["image_id"]) for i in range(host, num, hosts)]
    assert ids[ok].tolist() == expected  # this host's share, in stored order
    assert ok.tolist() == [True] * len(expected) + [False] * (len(ok) - len(expected))  # padding only at the end
    for b in batches:
      pad = ~b["example_valid"]
      assert not b["image"][pad].any() and not b["valid"][pad].any() and not b["image_id"][pad].any()
      for j in np.nonzero(b["example_valid"])[0]:
        want = eval_transform(source[int(b["image_id"][j]) - 100], (32, 48))
        np.testing.assert_array_equal(b["image"][j], want["image"])
        np.testing.assert_allclose(b["frame"][j], want["frame"])
    seen += ids[ok].tolist()
  assert sorted(seen) == [int(source[i]["image_id"]) for i in range(num)]
  assert len(set(counts)) == 1  # every host runs the same number of eval steps


def test_multiscale_gives_one_size_per_batch_changing_every_period():
  sizes, period = (32, 48, 64), 3
  kwargs = dict(batch_size=2, image_size=999, train=True, max_boxes=5, seed=11, multiscale_sizes=sizes,
                multiscale_period=period, shard_count=2)
  got = [b["image"].shape[1:3] for b in _take(make_loader(SOURCE, shard_index=0, **kwargs), 12)]
  assert all(h == w for h, w in got)
  sides = [h for h, _ in got]
  assert sides == [multiscale_size(s, seed=11, sizes=sizes, period=period) for s in range(12)]
  for start in range(0, 12, period):
    assert len(set(sides[start:start + period])) == 1
  # Every host draws the same sizes (they depend on seed and step only), and the draw is not constant.
  other = [b["image"].shape[1] for b in _take(make_loader(SOURCE, shard_index=1, **kwargs), 12)]
  assert other == sides
  assert len({multiscale_size(s, seed=11, sizes=sizes, period=period) for s in range(0, 60, period)}) == 3
  assert [multiscale_size(s, seed=11, sizes=sizes, period=1) for s in range(30)] != [
      multiscale_size(s, seed=12, sizes=sizes, period=1) for s in range(30)]


def test_training_is_deterministic_given_the_seed():
  kwargs = dict(batch_size=3, image_size=48, train=True, max_boxes=12, mosaic_prob=0.5, shard_index=0, shard_count=1)
  a = _take(make_loader(SOURCE, seed=5, **kwargs), 4)
  b = _take(make_loader(SOURCE, seed=5, read_threads=0, **kwargs), 4)
  _assert_batches_equal(a, b)
  c = _take(make_loader(SOURCE, seed=6, **kwargs), 4)
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def _host_steps(source, hosts, steps, **kwargs):
  """Returns, per step, the batches of hosts 0..hosts-1 concatenated in host order."""
  per_host = [_take(make_loader(source, shard_index=h, shard_count=hosts, **kwargs), steps) for h in range(hosts)]
  return [{key: np.concatenate([b[key] for b in step]) for key in step[0]} for step in zip(*per_host)]


@pytest.mark.parametrize("hosts", [2, 3])
def test_hosts_together_yield_the_one_host_global_batch(hosts):
  # Per-host batch 2: a global batch of 4 or 6 out of 12 examples, so 5 steps cross one or two epoch boundaries.
  kwargs = dict(image_size=48, train=True, max_boxes=12, seed=4, mosaic_prob=0.5, multiscale_sizes=(32, 48),
                multiscale_period=2)
  together = _host_steps(SOURCE, hosts, 5, batch_size=2, **kwargs)
  one_host = _take(make_loader(SOURCE, batch_size=2 * hosts, shard_index=0, shard_count=1, **kwargs), 5)
  _assert_batches_equal(together, one_host)
  # Not vacuous: the augmentations changed the images, and the stream is shuffled.
  assert not np.array_equal(one_host[0]["image"][0], eval_transform(SOURCE[0], 48)["image"])
  order = np.concatenate([b["image_id"] for b in one_host])
  assert order[:12].tolist() != [int(SOURCE[i]["image_id"]) for i in range(12)]


@pytest.mark.parametrize("num, hosts, batch_size", [(12, 2, 2), (12, 3, 2), (11, 3, 2), (3, 2, 4)])
def test_every_epoch_is_a_permutation_split_across_hosts(num, hosts, batch_size):
  # (3, 2, 4): the global batch of 8 is larger than the source, so one batch spans several epochs.
  source = painted_source(num, seed=6, height=40, width=40, boxes_per_image=2)
  ids = [int(source[i]["image_id"]) for i in range(num)]
  epochs = 3
  global_batch = hosts * batch_size
  steps = _host_steps(source, hosts, num * epochs // global_batch, batch_size=batch_size, image_size=32, train=True,
                      max_boxes=3, seed=1, mosaic_prob=0.5, num_epochs=epochs)
  stream = np.concatenate([b["image_id"] for b in steps]).tolist()  # global order: step, then host, then slot
  assert len(stream) == num * epochs // global_batch * global_batch
  for e in range(len(stream) // num):
    assert sorted(stream[e * num:(e + 1) * num]) == ids  # every example once per epoch, across hosts
  tail = stream[len(stream) // num * num:]
  assert len(set(tail)) == len(tail)
  if num % global_batch == 0:  # no step straddles an epoch: hosts hold different records in each step
    for b in steps:
      assert len(set(b["image_id"].tolist())) == global_batch
  assert stream[:num] != stream[num:2 * num]  # a new order every epoch


def test_hosts_draw_independent_augmentations():
  ex = SOURCE[0]
  copies = ListSource([{**ex, "image_id": np.int64(i)} for i in range(4)], SOURCE.class_names)
  images = [np.stack([b["image"] for b in _take(make_loader(copies, batch_size=2, image_size=48, train=True,
                                                            seed=0, shard_index=host, shard_count=2), 2)])
            for host in range(2)]
  assert not np.array_equal(images[0], images[1])


def test_finite_epochs_give_every_host_the_same_number_of_batches():
  source = painted_source(11, seed=5, height=40, width=40, boxes_per_image=2)
  counts = []
  for host in range(3):
    loader = make_loader(source, batch_size=2, image_size=32, train=True, max_boxes=3, seed=0, shard_index=host,
                         shard_count=3, num_epochs=2)
    batches = list(loader)
    counts.append(len(batches))
    assert len(batches) == loader.num_batches == 11 * 2 // (2 * 3)
  assert len(set(counts)) == 1


def test_a_source_smaller_than_the_global_batch_repeats():
  source = painted_source(1, seed=7, height=40, width=40, boxes_per_image=2)
  batches = _take(make_loader(source, batch_size=3, image_size=32, train=True, max_boxes=3, seed=0, mosaic_prob=1.0,
                              shard_index=1, shard_count=2), 2)
  assert all(b["image_id"].tolist() == [int(source[0]["image_id"])] * 3 for b in batches)
  assert not np.array_equal(batches[0]["image"][0], batches[0]["image"][1])  # each record its own augmentation


@pytest.mark.parametrize("shard_index, shard_count", [(0, 0), (2, 2), (-1, 2)])
def test_rejects_an_empty_source_and_bad_shards(shard_index, shard_count):
  with pytest.raises(ValueError, match="empty"):
    make_loader(ListSource([], ["a"]), batch_size=2, image_size=32, train=True, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match="shard_index"):
    make_loader(SOURCE, batch_size=2, image_size=32, train=True, shard_index=shard_index, shard_count=shard_count)


def _resume_loader(**overrides):
  kwargs = dict(batch_size=3, image_size=48, train=True, max_boxes=12, seed=7, mosaic_prob=0.5,
                multiscale_sizes=(32, 48), multiscale_period=2, shard_index=0, shard_count=1)
  return make_loader(SOURCE, **{**kwargs, **overrides})


@pytest.mark.parametrize("shard_index, shard_count", [(0, 1), (1, 2)])
def test_restored_iterator_continues_exactly_through_orbax(tmp_path, shard_index, shard_count):
  hosts = dict(shard_index=shard_index, shard_count=shard_count)
  loader = _resume_loader(**hosts)
  unbroken = _take(loader, 10)
  it = iter(loader)
  for _ in range(5):  # past the first epoch boundary (12 examples)
    next(it)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(5, args=ocp.args.Composite(loader=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  it.close()
  restored = iter(_resume_loader(**hosts))
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.restore(manager.latest_step(), args=ocp.args.Composite(loader=grain.checkpoint.CheckpointRestore(restored)))
  _assert_batches_equal([next(restored) for _ in range(5)], unbroken[5:])
  restored.close()


def test_set_state_rewinds_to_a_saved_position():
  it = iter(_resume_loader())
  next(it)
  state = it.get_state()
  first = [next(it) for _ in range(3)]
  it.set_state(state)
  _assert_batches_equal([next(it) for _ in range(3)], first)
  it.close()


def test_collate_keeps_the_first_boxes_and_counts_the_rest():
  ex = eval_transform(SOURCE[0], 32)
  batch = collate([{**ex, "example_valid": np.bool_(True)}] * 2, max_boxes=3)
  np.testing.assert_array_equal(batch["num_truncated"], [2, 2])
  np.testing.assert_allclose(batch["boxes"][0], ex["boxes"][:3])


@pytest.mark.slow
def test_batches_do_not_depend_on_the_worker_count():
  kwargs = dict(batch_size=2, image_size=48, train=True, max_boxes=12, seed=9, mosaic_prob=0.5,
                multiscale_sizes=(32, 48), multiscale_period=2, shard_index=0, shard_count=1)
  in_process = _take(make_loader(SOURCE, worker_count=0, **kwargs), 6)
  loader = make_loader(SOURCE, worker_count=2, **kwargs)
  it = iter(loader)
  with_workers = [next(it) for _ in range(6)]
  _assert_batches_equal(with_workers, in_process)
  state = it.get_state()
  it.close()
  resumed = iter(make_loader(SOURCE, worker_count=2, **kwargs))
  resumed.set_state(state)
  _assert_batches_equal([next(resumed) for _ in range(2)], _take(make_loader(SOURCE, **kwargs), 8)[6:])
  resumed.close()


def test_reads_the_shapes_set(shapes_data_dir):
  shapes = pytest.importorskip("jaxdet.data.shapes")
  source = shapes.ShapesSource("validation", config="tiny", data_dir=shapes_data_dir)
  loader = make_loader(source, batch_size=5, image_size=96, train=False, max_boxes=16, shard_index=0, shard_count=1)
  batches = list(loader)
  ids = np.concatenate([b["image_id"][b["example_valid"]] for b in batches])
  assert sorted(ids.tolist()) == sorted(int(source[i]["image_id"]) for i in range(len(source)))
  train = _take(make_loader(source, batch_size=4, image_size=64, train=True, max_boxes=16, mosaic_prob=0.5,
                            shard_index=0, shard_count=1), 2)
  assert train[1]["image"].shape == (4, 64, 64, 3) and train[1]["valid"].any()
