"""The grain input pipeline: fixed-shape, per-host batches for training (augmented, multi-scale) and evaluation.

Training: every host builds the same global stream of source indices, `range(len(source))` shuffled with a new
permutation each epoch and repeated (`num_epochs`, or forever). With `batch_size` B per host and `shard_count` n
hosts, global step s is the G = B * n consecutive records `[s * G, (s + 1) * G)` of that stream, and host h takes
`[s * G + h * B, s * G + (h + 1) * B)`: host-local record k is global position
`p = (k // B) * G + h * B + k % B`. Record p is mapped through `transforms.train_transform` (flip, Mosaic with
`mosaic_prob` and partners drawn from the whole source, CenterNet's scale + crop, colour jitter; or SSD's pipeline
when `augment` is an `SSDAugment`) with a NumPy
generator seeded by `(seed, p)` only, so the hosts' batches of a step, concatenated in host order, are exactly
the one-host batch of size G of the same step — same images, augmentations and order — and the losses of a run
depend on the global batch, not on the number of hosts (or grain workers: grain's `random_map` would seed per
record too, but does not expose the position). Each host reads only its own B records of a step. With
`num_epochs`, every host yields `floor(len(source) * num_epochs / G)` batches. With `multiscale_sizes`
(YOLOv2's multi-scale training) host-local batch s is global step s (when the iterator is checkpointed with
the model) and is `multiscale_size(s, ...)` pixels square: one size per step, a new draw every
`multiscale_period` steps, a function of `(seed, s // period)` only, so every host agrees and a resumed run
continues with the same sizes; jit compiles once per size.

Evaluation: no shuffle, no augmentation, one pass in stored order; the last batch is padded to the full batch
size, and every host yields the same number of batches (`Loader.num_batches`) so multi-host steps stay in
lockstep; `example_valid` is False on padding.

A batch is the layout of `jaxdet.data.source` (uint8 images; the detector normalises them on device) plus
  example_valid   bool `[B]`: False on eval padding (all True in training).
  num_truncated   int32 `[B]`: objects dropped because the image had more than `max_boxes` (the first
                  `max_boxes` are kept); log its sum — truncation is never silent.

Resuming: the iterator is a `grain.DatasetIterator` whose state is the host-local position; save and restore it
with the model through orbax:
  mngr.save(step, args=ocp.args.Composite(..., loader=grain.checkpoint.CheckpointSave(iterator)))
  mngr.restore(step, args=ocp.args.Composite(..., loader=grain.checkpoint.CheckpointRestore(iterator)))
after which `iterator` yields exactly the batches an unbroken run would have (`get_state` / `set_state` directly
work too). A run restored with the same number of hosts continues exactly; the position is per host, so changing
the host count at a restore needs the global step translated, not the saved state.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Sequence

import grain
import numpy as np

from jaxdet.data.geometric import DEFAULT_FILL, as_size
from jaxdet.data.source import DetectionSource, Example
from jaxdet.data.transforms import Augment, SSDAugment, eval_transform, train_transform

Batch = dict[str, np.ndarray]

DEFAULT_MULTISCALE_SIZES = tuple(range(320, 609, 32))  # YOLOv2: 320, 352, ..., 608


def multiscale_size(step: int, *, seed: int, sizes: Sequence[int] = DEFAULT_MULTISCALE_SIZES,
                    period: int = 10) -> int:
  """Returns the square input size of training step `step`: uniform over `sizes`, redrawn every `period` steps.

  YOLOv2 draws a new size from 320..608 (multiples of 32) every 10 batches. The draw depends only on
  `(seed, step // period)`.
  """
  rng = np.random.default_rng((seed, 1, step // period))
  return int(sizes[int(rng.integers(len(sizes)))])


def collate(examples: Sequence[Example], *, max_boxes: int) -> Batch:
  """Returns the batch of `examples` (same image size): stacked, boxes padded to `max_boxes` with `valid`.

  Examples with `proposals [P, 4]` / `proposal_valid [P]` add `proposals [B, P, 4]` and `proposal_valid [B, P]`
  (P the largest of the batch, padded with zeros and False; examples without them, the eval padding, get none).
  """
  n = len(examples)
  boxes = np.zeros((n, max_boxes, 4), np.float32)
  labels = np.zeros((n, max_boxes), np.int32)
  crowd = np.zeros((n, max_boxes), bool)
  difficult = np.zeros((n, max_boxes), bool)
  valid = np.zeros((n, max_boxes), bool)
  truncated = np.zeros((n,), np.int32)
  for i, ex in enumerate(examples):
    k = ex["boxes"].shape[0]
    m = min(k, max_boxes)
    boxes[i, :m] = ex["boxes"][:m]
    labels[i, :m] = ex["labels"][:m]
    crowd[i, :m] = ex["crowd"][:m]
    difficult[i, :m] = ex["difficult"][:m]
    valid[i, :m] = True
    truncated[i] = k - m
  batch = {
      "image": np.stack([ex["image"] for ex in examples]),
      "boxes": boxes, "labels": labels, "crowd": crowd, "difficult": difficult, "valid": valid,
      "image_id": np.array([ex["image_id"] for ex in examples], np.int64),
      "orig_size": np.stack([ex["orig_size"] for ex in examples]).astype(np.int32),
      "frame": np.stack([ex["frame"] for ex in examples]).astype(np.float32),
      "example_valid": np.array([ex["example_valid"] for ex in examples], bool),
      "num_truncated": truncated,
  }
  with_proposals = [ex for ex in examples if "proposals" in ex]
  if with_proposals:  # fixed P per image (ProposalSource); eval padding examples have none: zeros, invalid
    p = max(ex["proposals"].shape[0] for ex in with_proposals)
    batch["proposals"] = np.zeros((n, p, 4), np.float32)
    batch["proposal_valid"] = np.zeros((n, p), bool)
    for i, ex in enumerate(examples):
      if "proposals" in ex:
        k = ex["proposals"].shape[0]
        batch["proposals"][i, :k] = ex["proposals"]
        batch["proposal_valid"][i, :k] = ex["proposal_valid"]
  return batch


def padding_example(size: tuple[int, int]) -> Example:
  """Returns an empty example of image size `size` (h, w), marked `example_valid=False`."""
  h, w = size
  return {"image": np.zeros((h, w, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
          "labels": np.zeros((0,), np.int32), "crowd": np.zeros((0,), bool), "difficult": np.zeros((0,), bool),
          "image_id": np.int64(0), "orig_size": np.zeros((2,), np.int32),
          "frame": np.array([1.0, 1.0, 0.0, 0.0], np.float32), "example_valid": np.bool_(False)}


@dataclasses.dataclass(frozen=True)
class _Collate:
  max_boxes: int

  def __call__(self, examples: Sequence[Example]) -> Batch:
    return collate(examples, max_boxes=self.max_boxes)


@dataclasses.dataclass(frozen=True)
class _TrainMap:
  """Host-local record `k` -> the augmented example at global stream position `p` (see the module docstring).

  Picklable, for grain's worker processes. `stream` maps global positions to source indices and is the same on
  every host. Mosaic's three other images are distinct source examples other than this one (while the source has
  that many; Ultralytics draws with replacement, itself included).
  """
  examples: grain.MapDataset
  stream: grain.MapDataset
  seed: int
  batch_size: int
  shard_index: int
  shard_count: int
  image_size: tuple[int, int]
  multiscale_sizes: tuple[int, ...] | None
  multiscale_period: int
  augment: Augment | SSDAugment
  mosaic_prob: float

  def global_position(self, k: int) -> int:
    step, offset = divmod(k, self.batch_size)
    return (step * self.shard_count + self.shard_index) * self.batch_size + offset

  def __call__(self, k: int) -> Example:
    p = self.global_position(k)
    position = int(self.stream[p])
    rng = np.random.default_rng((self.seed, 0, p))
    example = self.examples[position]
    size = self.image_size
    if self.multiscale_sizes:
      s = multiscale_size(k // self.batch_size, seed=self.seed, sizes=self.multiscale_sizes,
                          period=self.multiscale_period)
      size = (s, s)
    others = None
    if self.mosaic_prob > 0 and rng.uniform() < self.mosaic_prob:
      n = len(self.examples)
      if n == 1:
        others = [example] * 3
      else:
        draws = rng.choice(n - 1, size=3, replace=n - 1 < 3)
        others = [self.examples[int(j + (j >= position))] for j in draws]  # skips `position` itself
    example = train_transform(example, size, rng=rng, augment=self.augment, mosaic_with=others)
    example["example_valid"] = np.bool_(True)
    return example


@dataclasses.dataclass(frozen=True)
class _EvalMap:
  """Position `index` of this host's padded eval pass -> prepared example, or padding past the shard's end."""
  shard: grain.MapDataset
  image_size: tuple[int, int]
  mode: str
  fill: int

  def __call__(self, index: int) -> Example:
    if index >= len(self.shard):
      return padding_example(self.image_size)
    example = eval_transform(self.shard[index], self.image_size, mode=self.mode, fill=self.fill)
    example["example_valid"] = np.bool_(True)
    return example


@dataclasses.dataclass(frozen=True)
class Loader:
  """Batches of one host: iterate for a `grain.DatasetIterator` (with `get_state` / `set_state`)."""
  dataset: grain.IterDataset
  num_batches: int | None  # per host; None when training repeats forever

  def __iter__(self) -> grain.DatasetIterator:
    return iter(self.dataset)


def _enable_grain_workers() -> None:
  # grain's worker processes read absl flags; outside an absl app (tests, notebooks) they are unparsed.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_loader(source: DetectionSource, *, batch_size: int, image_size: int | Sequence[int], train: bool,
                max_boxes: int = 100, seed: int = 0, augment: Augment | SSDAugment = Augment(),
                mosaic_prob: float = 0.0,
                multiscale_sizes: Sequence[int] | None = None, multiscale_period: int = 10,
                eval_resize: str = "letterbox", shard_index: int | None = None, shard_count: int | None = None,
                worker_count: int = 0, read_threads: int = 1, prefetch_batches: int = 2,
                num_epochs: int | None = None) -> Loader:
  """Returns the `Loader` of this host's batches of `source` (see the module docstring for the layout).

  Args:
    batch_size: examples per batch on this host (the global batch is `batch_size * shard_count`). In training
      the hosts' batches of a step are consecutive slices of one global batch (module docstring), so the same
      seed and global batch give the same batches on any number of hosts.
    image_size: network input (h, w) or side; training uses `multiscale_sizes` instead when given.
    train: augment, shuffle and repeat (True) or one ordered, padded pass (False).
    max_boxes: box slots per image; the first `max_boxes` objects are kept and the rest counted.
    seed: seeds the shuffle, every augmentation and the multi-scale sizes.
    augment, mosaic_prob: training augmentations (`transforms.Augment`, or `transforms.SSDAugment` for SSD's
      pipeline) and the chance of Mosaic per image (CenterNet's pipeline only).
    multiscale_sizes, multiscale_period: YOLOv2 multi-scale training (e.g. `DEFAULT_MULTISCALE_SIZES`, 10).
    eval_resize: "letterbox" or "resize" for evaluation.
    shard_index, shard_count: this host and the number of hosts (default `jax.process_index()` / `_count()`).
    worker_count: grain worker processes (0: in this process); the batches are the same for any count.
    read_threads, prefetch_batches: grain's `ReadOptions` in each process.
    num_epochs: training epochs (None: forever); every host then yields
      `len(source) * num_epochs // (batch_size * shard_count)` full batches.
  """
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only the main process needs it)
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
  if isinstance(augment, SSDAugment) and mosaic_prob > 0:
    raise ValueError(f"mosaic_prob={mosaic_prob}: Mosaic is not part of SSD's augmentation (SSDAugment)")
  size = as_size(image_size)
  examples = grain.MapDataset.source(source)
  if train:
    if len(source) == 0:
      raise ValueError("training needs a source with at least one example; this one is empty")
    global_batch = batch_size * shard_count
    # The global stream holds source indices; `_TrainMap` reads them, so Mosaic knows which example it has.
    stream = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(num_epochs)
    if num_epochs is None:
      num_batches = None
      local_records = sys.maxsize // global_batch * batch_size  # keeps every global position inside `stream`
    else:
      num_batches = len(source) * num_epochs // global_batch
      local_records = num_batches * batch_size
    ds = grain.MapDataset.range(local_records).map(_TrainMap(
        examples=examples, stream=stream, seed=seed, batch_size=batch_size, shard_index=shard_index,
        shard_count=shard_count, image_size=size,
        multiscale_sizes=tuple(multiscale_sizes) if multiscale_sizes else None,
        multiscale_period=multiscale_period, augment=augment, mosaic_prob=mosaic_prob))
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_Collate(max_boxes))
  else:
    num_batches = math.ceil(math.ceil(len(source) / shard_count) / batch_size)
    shard = examples[shard_index::shard_count]
    fill = augment.fill if isinstance(augment, Augment) else DEFAULT_FILL
    ds = grain.MapDataset.range(num_batches * batch_size).map(
        _EvalMap(shard=shard, image_size=size, mode=eval_resize, fill=fill))
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_Collate(max_boxes))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))
  if worker_count > 0:
    _enable_grain_workers()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return Loader(dataset=it_ds, num_batches=num_batches)
