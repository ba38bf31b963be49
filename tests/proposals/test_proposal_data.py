"""Cached proposals through the data pipeline: joined by image id, moved with the pixels, clipped, padded, batched."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdet.data import transforms as T
from jaxdet.data.loader import collate, make_loader
from jaxdet.proposals.cache import cached_proposals, load_proposals, save_proposals
from jaxdet.proposals.source import ProposalSource
from tests.data.synthetic import assert_boxes_match_pixels, painted_source

SOURCE = painted_source(4, seed=7, height=72, width=96)


def _arrays(source, extra_per_image: int = 0):
  """Cache arrays whose proposals are each image's painted boxes (then `extra_per_image` whole-image boxes)."""
  ids, counts, boxes = [], [], []
  for i in range(len(source)):
    ex = source[i]
    b = np.concatenate([ex["boxes"], np.tile([[0, 0, 96, 72]], (extra_per_image, 1))]).astype(np.float32)
    ids.append(int(ex["image_id"]))
    counts.append(len(b))
    boxes.append(b)
  return {"image_id": np.array(ids[::-1]), "counts": np.array(counts[::-1]),  # stored in another order
          "boxes": np.concatenate(boxes[::-1]), "seconds": np.zeros(len(ids))}


def test_source_joins_by_image_id_and_pads():
  src = ProposalSource(SOURCE, _arrays(SOURCE), num_proposals=8)
  for i in range(len(SOURCE)):
    ex = src[i]
    assert ex["proposals"].shape == (8, 4) and ex["proposal_valid"].shape == (8,)
    n = len(SOURCE[i]["boxes"])
    np.testing.assert_array_equal(ex["proposals"][:n], SOURCE[i]["boxes"])
    assert ex["proposal_valid"].tolist() == [True] * n + [False] * (8 - n)
    assert np.all(ex["proposals"][n:] == 0)
  truncated = ProposalSource(SOURCE, _arrays(SOURCE), num_proposals=3)
  assert truncated[0]["proposal_valid"].all() and len(truncated[0]["proposals"]) == 3
  arrays = _arrays(SOURCE)
  arrays["image_id"] = arrays["image_id"] + 1000
  with pytest.raises(KeyError, match="image id"):
    ProposalSource(SOURCE, arrays, num_proposals=4, path="cache.npz")[0]


GEOMETRIC = {
    "hflip": lambda ex, rng: T.hflip(ex),
    "resize_down": lambda ex, rng: T.resize(ex, (48, 60)),
    "resize_up": lambda ex, rng: T.resize(ex, (150, 130)),
    "letterbox": lambda ex, rng: T.letterbox(ex, 128),
    "scale_crop": lambda ex, rng: T.random_scale_crop(ex, 64, rng=rng, scale_range=(0.4, 0.8)),
    "eval": lambda ex, rng: T.eval_transform(ex, 100),
    "zoom_out": lambda ex, rng: T.zoom_out(ex, rng=rng, prob=1.0),
    "min_iou_crop": lambda ex, rng: T.min_iou_crop(ex, rng=rng),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
@pytest.mark.parametrize("index", range(4))
def test_proposals_stay_on_their_pixels(name, index):
  src = ProposalSource(SOURCE, _arrays(SOURCE, extra_per_image=1), num_proposals=9)
  ex = src[index]
  labels = SOURCE[index]["labels"]
  out = GEOMETRIC[name](ex, np.random.default_rng(index))
  n = len(labels)
  assert out["proposals"].shape == (9, 4) and out["proposal_valid"].shape == (9,)
  valid = out["proposal_valid"][:n]
  # a painted box's proposal, clipped, still spans that colour's visible pixels; one that left the image is invalid
  assert_boxes_match_pixels(out["image"], out["proposals"][:n][valid], labels[valid])
  h, w = out["image"].shape[:2]
  p = out["proposals"][out["proposal_valid"]]
  assert np.all(p >= 0) and np.all(p[:, [0, 2]] <= w) and np.all(p[:, [1, 3]] <= h)
  assert np.all(p[:, 2:] > p[:, :2])
  assert not out["proposal_valid"][n + 1:].any()  # padding stays invalid
  assert np.all(out["proposals"][~out["proposal_valid"]] == 0)
  if name not in ("scale_crop", "min_iou_crop"):
    assert out["proposal_valid"][:n + 1].all()  # nothing leaves the image in these transforms


def test_collate_and_loader_batch_proposals():
  src = ProposalSource(SOURCE, _arrays(SOURCE), num_proposals=6)
  batch = collate([dict(src[0], example_valid=True), dict(SOURCE[1], example_valid=False)], max_boxes=8)
  assert batch["proposals"].shape == (2, 6, 4) and batch["proposal_valid"].shape == (2, 6)
  assert not batch["proposal_valid"][1].any()  # an example without proposals (eval padding) gets none
  for train in (True, False):
    loader = make_loader(src, batch_size=3, image_size=64, train=train, max_boxes=8, shard_index=0, shard_count=1,
                         augment=T.Augment(brightness=0, contrast=0, saturation=0, lighting=0))
    batch = next(iter(loader))
    assert batch["proposals"].shape == (3, 6, 4) and batch["proposal_valid"].dtype == bool
  with pytest.raises(ValueError, match="Mosaic"):
    T.train_transform(src[0], 64, rng=np.random.default_rng(0), mosaic_with=[src[1], src[2], src[3]])


def test_cache_round_trip_and_settings_check(tmp_path):
  pytest.importorskip("skimage")
  path = str(tmp_path / "proposals" / "x" / "validation.npz")
  small = painted_source(3, seed=1, height=40, width=48)
  arrays = cached_proposals(small, path, mode="single", k_scale=1.0, workers=0, show_progress=False)
  assert arrays["counts"].sum() == len(arrays["boxes"]) and len(arrays["image_id"]) == 3
  again, settings = load_proposals(path)
  np.testing.assert_array_equal(again["boxes"], arrays["boxes"])
  assert settings["mode"] == "single"
  with pytest.raises(ValueError, match="was made with"):
    cached_proposals(small, path, mode="fast", k_scale=1.0, workers=0)
  save_proposals(str(tmp_path / "bad.npz"), {"image_id": np.array([1]), "counts": np.array([2]),
                                              "boxes": np.zeros((1, 4), np.float32)}, {})
  with pytest.raises(ValueError, match="inconsistent"):
    load_proposals(str(tmp_path / "bad.npz"))
  with pytest.raises(FileNotFoundError, match="no proposal cache"):
    load_proposals(str(tmp_path / "none.npz"))
