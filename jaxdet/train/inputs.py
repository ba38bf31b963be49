"""From a config to data: the source of a split (shapes, a COCO folder, Pascal VOC, tfds) and its loader.

With `config.data.device_augment` the training loader only gathers fixed-size uint8 images from a decoded cache
(`jaxdet.data.cache`; `config.data.cache_dir` saves it for the next run, `config.data.cache_size` sets its image
size, default `image_size`; `config.data.read_threads` threads gather, `worker_count` is not used) and
`device_augment(config)` is the augmentation the train step applies on device (`jaxdet.data.device_augment`).
Off by default: the host pipeline of `jaxdet.data.loader`, over a `jaxdet.data.memoized.MemoizedSource` that keeps
each decoded training example in memory up to `config.data.keep_decoded_mib` MiB (default 1024; 0: read and decode
every epoch) — the same batches either way, without the read and decode after the first epoch.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax

from jaxdet.data.cache import build_cache, make_cached_loader
from jaxdet.data.device_augment import augment_batch, check_supported
from jaxdet.data.loader import Loader, make_loader
from jaxdet.data.memoized import MemoizedSource
from jaxdet.data.source import DetectionSource
from jaxdet.data.transforms import Augment, SSDAugment

DEFAULT_KEEP_DECODED_MIB = 1024
PIPELINES = {"centernet": Augment, "ssd": SSDAugment}  # config.data.pipeline -> the options of its augmentation


def build_source(config: Any, split: str) -> DetectionSource:
  """Returns the `DetectionSource` of `split` for `config.data`, with cached proposals when
  `config.data.proposals.num` > 0 (`jaxdet.proposals.source.with_proposals`: computed on first use).

  `config.data.name`:
    "shapes": the embedded synthetic set (`config.data.shapes_config`, `config.data.data_dir`).
    "coco": a COCO-format folder `config.data.root` with `annotations/instances_<split>.json` and images in
      `<root>/<split>` (COCO's own layout) or `<root>/images/<split>` (what `export_coco` writes).
    "voc": a VOCdevkit year folder `config.data.root` (`Annotations/`, `ImageSets/Main/<split>.txt`, `JPEGImages/`).
    "tfds": a prepared tfds data set `config.data.tfds_name` (e.g. "coco/2017", "voc/2007").
  """
  source = _build_source(config.data, split)
  proposals = config.data.get("proposals")
  if proposals is not None and proposals.get("num", 0) > 0:
    from jaxdet.proposals.source import with_proposals  # pylint: disable=g-import-not-at-top
    source = with_proposals(source, config.data, split, show_progress=jax.process_index() == 0)
  return source


def _build_source(data: Any, split: str) -> DetectionSource:
  name = data.name
  if name == "shapes":
    from jaxdet.data.shapes import ShapesSource  # pylint: disable=g-import-not-at-top
    return ShapesSource(split, config=data.get("shapes_config", "default"), data_dir=data.get("data_dir") or None)
  if name == "coco":
    from jaxdet.data.coco import CocoSource  # pylint: disable=g-import-not-at-top
    annotations = os.path.join(data.root, "annotations", f"instances_{split}.json")
    images = os.path.join(data.root, split)
    if not os.path.isdir(images):
      images = os.path.join(data.root, "images", split)
    return CocoSource(annotations, images, on_error=data.get("on_error", "raise"))
  if name == "voc":
    from jaxdet.data.voc import VocSource  # pylint: disable=g-import-not-at-top
    return VocSource(data.root, split, on_error=data.get("on_error", "raise"))
  if name == "tfds":
    from jaxdet.data.tfds_sources import TfdsSource  # pylint: disable=g-import-not-at-top
    return TfdsSource(data.tfds_name, split, data_dir=data.get("data_dir") or None)
  raise ValueError(f"config.data.name must be shapes, coco, voc or tfds, got {name!r}")


def _per_host(global_batch: int, what: str) -> int:
  hosts, devices = jax.process_count(), jax.device_count()
  if global_batch % devices:
    raise ValueError(f"{what} {global_batch} is not divisible by the {devices} devices")
  return global_batch // hosts


def train_augment(config: Any) -> Augment | SSDAugment:
  """Returns the training augmentation of `config.data`: `config.data.pipeline` names it ("centernet", the
  default: `Augment`; "ssd": `SSDAugment`) and `config.data.augment` holds its options."""
  data = config.data
  pipeline = data.get("pipeline", "centernet")
  if pipeline not in PIPELINES:
    raise ValueError(f"config.data.pipeline must be one of {sorted(PIPELINES)}, got {pipeline!r}")
  options = dict(data.get("augment", {}))
  if pipeline == "centernet":
    scale_range = options.get("scale_range")
    if scale_range is not None and (len(scale_range) == 0 or None in tuple(scale_range)):
      options["scale_range"] = None  # `--config.data.augment.scale_range=()` (or None): letterbox, no scale + crop
  return PIPELINES[pipeline](**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def _check_device_augment(config: Any) -> None:
  """Raises ValueError naming the config key that device augmentation cannot honour."""
  data = config.data
  check_supported(train_augment(config))
  if data.get("mosaic_prob", 0.0) > 0:
    raise ValueError(f"config.data.mosaic_prob={data.mosaic_prob}: Mosaic runs on the host only; set it to 0 or "
                     "config.data.device_augment=False")
  if data.get("multiscale_sizes"):
    raise ValueError("config.data.multiscale_sizes: multi-scale training runs on the host only; set "
                     "config.data.device_augment=False")
  proposals = data.get("proposals")
  if proposals is not None and proposals.get("num", 0) > 0:
    raise ValueError("config.data.proposals: per-image proposals are not moved by device augmentation; set "
                     "config.data.device_augment=False")


def device_augment(config: Any) -> Callable[[dict[str, jax.Array]], dict[str, jax.Array]] | None:
  """Returns the on-device training augmentation `batch -> batch` of `config` (to call inside the jitted step),
  or None when `config.data.device_augment` is off. Its batch needs `position` (the cached loader's)."""
  if not config.data.get("device_augment", False):
    return None
  _check_device_augment(config)
  return functools.partial(augment_batch, seed=config.seed, size=config.data.image_size,
                           augment=train_augment(config))


def train_loader(config: Any, source: DetectionSource) -> Loader:
  """Returns this host's training loader: `config.batch_size` is the global batch over all hosts.

  With `config.data.device_augment`, the cached loader of un-augmented uint8 images; otherwise `make_loader` over
  the source with its decoded examples kept (`config.data.keep_decoded_mib`; module docstring).
  """
  data = config.data
  augment = train_augment(config)
  if data.get("device_augment", False):
    _check_device_augment(config)
    cache = build_cache(source, image_size=data.get("cache_size") or data.image_size, max_boxes=data.max_boxes,
                        fill=augment.fill, directory=data.get("cache_dir") or None)
    return make_cached_loader(cache, batch_size=_per_host(config.batch_size, "config.batch_size"),
                              seed=config.seed, read_threads=data.get("read_threads", 1))
  keep_mib = data.get("keep_decoded_mib", DEFAULT_KEEP_DECODED_MIB)
  if keep_mib > 0:
    source = MemoizedSource(source, max_bytes=int(keep_mib * 2**20))
  return make_loader(source, batch_size=_per_host(config.batch_size, "config.batch_size"),
                     image_size=data.image_size, train=True, max_boxes=data.max_boxes, seed=config.seed,
                     augment=augment, mosaic_prob=data.get("mosaic_prob", 0.0),
                     multiscale_sizes=data.get("multiscale_sizes") or None,
                     multiscale_period=data.get("multiscale_period", 10), worker_count=data.get("worker_count", 0))


def eval_loader(config: Any, source: DetectionSource) -> Loader:
  """Returns this host's evaluation loader (one ordered pass, padded last batch with `example_valid`)."""
  data = config.data
  return make_loader(source, batch_size=_per_host(config.eval_batch_size, "config.eval_batch_size"),
                     image_size=data.image_size, train=False, max_boxes=data.max_boxes,
                     eval_resize=data.get("eval_resize", "letterbox"), worker_count=data.get("worker_count", 0))
