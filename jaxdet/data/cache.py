"""A decoded uint8 cache of a split, and the loader that batches it for device-side augmentation.

With augmentation on the device (`jaxdet.data.device_augment`) the host's only per-image work is to produce a
fixed-size uint8 image and its padded boxes. `build_cache` decodes every example of a source once into arrays —
images letterboxed to one `(H, W)` when their stored size differs (`eval_transform`, boxes kept whole, `frame`
recorded) — optionally saved under a directory and memory-mapped by later runs; `make_cached_loader` then makes a
batch by gathering rows (one NumPy fancy index per field: milliseconds for hundreds of images, no decoding, no
Python per image).

The batches follow `jaxdet.data.loader`'s global stream exactly — the same shuffled source indices at the same
global positions, the same split over hosts, `num_epochs`, resumable grain iterator — and add
  position   int32 `[B]`: each example's global stream position, which keys its augmentation on the device.
Differences from `make_loader`: no augmentation here (the device does it), images of another size are
letterboxed before the augmentation rather than transformed from the stored image, and objects beyond
`max_boxes` are dropped (and counted in `num_truncated`) at caching, before the augmentation's box rule
rather than after it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from typing import Sequence

import grain
import numpy as np

from jaxdet.data.geometric import DEFAULT_FILL, as_size
from jaxdet.data.loader import Batch, Loader
from jaxdet.data.source import DetectionSource
from jaxdet.data.transforms import eval_transform

FIELDS = ("image", "boxes", "labels", "crowd", "difficult", "valid", "image_id", "orig_size", "frame", "num_truncated")
_VERSION = 1
_MAX_POSITION = 2**31 - 1  # positions travel to the device as int32


@dataclasses.dataclass(frozen=True)
class DecodedCache:
  """Every example of a split, decoded: `arrays[field]` with the batch layout of `jaxdet.data.source` per row.

  image uint8 `[N, H, W, 3]`; boxes float32 `[N, M, 4]`; labels int32, crowd / difficult / valid bool `[N, M]`;
  image_id int64 `[N]`; orig_size int32 `[N, 2]`; frame float32 `[N, 4]`; num_truncated int32 `[N]`.
  """
  arrays: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(self.arrays["image"])

  @property
  def image_size(self) -> tuple[int, int]:
    return tuple(self.arrays["image"].shape[1:3])

  @property
  def max_boxes(self) -> int:
    return self.arrays["boxes"].shape[1]

  def gather(self, indices: np.ndarray) -> Batch:
    """Returns the rows `indices` of every field (copies), as a batch."""
    return {k: v[indices] for k, v in self.arrays.items()}


def _decode(source: DetectionSource, index: int, size: tuple[int, int], fill: int) -> dict[str, np.ndarray]:
  example = source[index]
  if tuple(example["image"].shape[:2]) != size:
    example = eval_transform(example, size, mode="letterbox", fill=fill)
  return example


def _fingerprint(source: DetectionSource, size: tuple[int, int], max_boxes: int, fill: int) -> dict:
  return {"version": _VERSION, "num_examples": len(source), "image_size": list(size), "max_boxes": max_boxes,
          "fill": fill, "source": type(source).__name__}


def build_cache(source: DetectionSource, *, image_size: int | Sequence[int], max_boxes: int,
                fill: int = DEFAULT_FILL, directory: str | os.PathLike[str] | None = None,
                threads: int | None = None) -> DecodedCache:
  """Returns the `DecodedCache` of `source` at `image_size`, with `max_boxes` box slots per image.

  Decodes with `threads` threads (default: the CPUs; PIL releases the GIL). With `directory`, a cache saved there
  for the same source type, length, size, box slots and fill is memory-mapped instead of decoding; otherwise the
  new cache is written there (one `.npy` per field and `cache.json`) for the next run. Delete the directory to
  rebuild after the source's contents change.
  """
  size = as_size(image_size)
  fingerprint = _fingerprint(source, size, max_boxes, fill)
  if directory is not None:
    cached = _load(directory, fingerprint)
    if cached is not None:
      return cached
  n = len(source)
  h, w = size
  arrays = {
      "image": np.zeros((n, h, w, 3), np.uint8), "boxes": np.zeros((n, max_boxes, 4), np.float32),
      "labels": np.zeros((n, max_boxes), np.int32), "crowd": np.zeros((n, max_boxes), bool),
      "difficult": np.zeros((n, max_boxes), bool), "valid": np.zeros((n, max_boxes), bool),
      "image_id": np.zeros((n,), np.int64), "orig_size": np.zeros((n, 2), np.int32),
      "frame": np.zeros((n, 4), np.float32), "num_truncated": np.zeros((n,), np.int32),
  }

  def fill_row(i: int) -> None:
    ex = _decode(source, i, size, fill)
    k = ex["boxes"].shape[0]
    m = min(k, max_boxes)
    arrays["image"][i] = ex["image"]
    for key in ("boxes", "labels", "crowd", "difficult"):
      arrays[key][i, :m] = ex[key][:m]
    arrays["valid"][i, :m] = True
    arrays["num_truncated"][i] = k - m
    arrays["image_id"][i] = ex["image_id"]
    arrays["orig_size"][i] = ex["orig_size"]
    arrays["frame"][i] = ex["frame"]

  with concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
    list(pool.map(fill_row, range(n)))  # list(): re-raises the first error, naming nothing lost
  cache = DecodedCache(arrays)
  if directory is not None:
    _save(cache, directory, fingerprint)
  return cache


def _save(cache: DecodedCache, directory: str | os.PathLike[str], fingerprint: dict) -> None:
  directory = os.fspath(directory)
  tmp = directory.rstrip("/") + f".tmp{os.getpid()}"
  os.makedirs(tmp, exist_ok=True)
  for key, value in cache.arrays.items():
    np.save(os.path.join(tmp, f"{key}.npy"), value)
  with open(os.path.join(tmp, "cache.json"), "w") as f:
    json.dump(fingerprint, f)
  if os.path.isdir(directory):  # a stale cache: replaced whole, never mixed
    for name in os.listdir(directory):
      os.remove(os.path.join(directory, name))
    os.rmdir(directory)
  os.replace(tmp, directory)


def _load(directory: str | os.PathLike[str], fingerprint: dict) -> DecodedCache | None:
  meta = os.path.join(directory, "cache.json")
  if not os.path.exists(meta):
    return None
  with open(meta) as f:
    if json.load(f) != fingerprint:
      return None
  arrays = {k: np.load(os.path.join(directory, f"{k}.npy"), mmap_mode="r" if k == "image" else None) for k in FIELDS}
  return DecodedCache(arrays)


@dataclasses.dataclass(frozen=True)
class _CachedBatch:
  """Host-local batch `k` -> the rows of the global stream positions that are this host's share of step k."""
  cache: DecodedCache
  stream: grain.MapDataset
  batch_size: int
  shard_index: int
  shard_count: int

  def positions(self, k: int) -> np.ndarray:
    first = (k * self.shard_count + self.shard_index) * self.batch_size
    return np.arange(first, first + self.batch_size, dtype=np.int64)

  def __call__(self, k: int) -> Batch:
    positions = self.positions(k)
    if positions[-1] > _MAX_POSITION:
      raise ValueError(f"stream position {positions[-1]} does not fit the int32 augmentation key; the cached loader "
                       f"supports {_MAX_POSITION} images per run")
    getitems = getattr(self.stream, "_getitems", None)  # grain's batched lookup: ~10x less overhead per index
    indices = getitems(positions.tolist()) if getitems else [self.stream[int(p)] for p in positions]
    batch = self.cache.gather(np.asarray(indices, np.int64))
    batch["example_valid"] = np.ones(self.batch_size, bool)
    batch["position"] = positions.astype(np.int32)
    return batch


def make_cached_loader(cache: DecodedCache, *, batch_size: int, seed: int = 0, shard_index: int | None = None,
                       shard_count: int | None = None, num_epochs: int | None = None, read_threads: int = 1,
                       prefetch_batches: int = 2) -> Loader:
  """Returns the training `Loader` of this host's batches of `cache` (module docstring): the global stream of
  `make_loader(..., train=True)` with the same `seed`, un-augmented, with `position [B]`.

  `read_threads` / `prefetch_batches` are grain's `ReadOptions` (each record is a whole batch here).
  """
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
  if len(cache) == 0:
    raise ValueError("training needs a source with at least one example; this cache is empty")
  stream = grain.MapDataset.range(len(cache)).seed(seed).shuffle().repeat(num_epochs)  # as make_loader's
  global_batch = batch_size * shard_count
  num_batches = None if num_epochs is None else len(cache) * num_epochs // global_batch
  local_batches = _MAX_POSITION // global_batch if num_batches is None else num_batches
  ds = grain.MapDataset.range(local_batches).map(_CachedBatch(cache=cache, stream=stream, batch_size=batch_size,
                                                              shard_index=shard_index, shard_count=shard_count))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))
  return Loader(dataset=it_ds, num_batches=num_batches)
