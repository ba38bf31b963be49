"""From a config to data: the source of a split (shapes, a COCO folder, Pascal VOC, tfds) and its loader."""

from __future__ import annotations

import os
from typing import Any

import jax

from jaxdet.data.loader import Loader, make_loader
from jaxdet.data.source import DetectionSource
from jaxdet.data.transforms import Augment, SSDAugment

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


def train_loader(config: Any, source: DetectionSource) -> Loader:
  """Returns this host's training loader: `config.batch_size` is the global batch over all hosts."""
  data = config.data
  augment = train_augment(config)
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
