"""`ShapesSource`: the embedded `shapes` set as a `DetectionSource`, generated into the tfds data dir on first use."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from jaxdet.data.shapes.builder import Shapes
from jaxdet.data.shapes.render import CLASS_NAMES
from jaxdet.data.source import DetectionSource, Example, make_example


def default_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """Returns `data_dir`, else `$JAXDET_DATA_DIR`, else `~/tensorflow_datasets`."""
  if data_dir is not None:
    return os.fspath(data_dir)
  return os.environ.get("JAXDET_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare_shapes(*, config: str = "default", data_dir: str | os.PathLike | None = None) -> Shapes:
  """Returns the `shapes` builder of `config`, generating the set into `data_dir` first if it is not there.

  Generating prints one line to stderr when it starts and one when it is done; tfds' own messages and progress
  bars go to the `jaxdet.data.shapes` logger at INFO instead of the console.
  """
  builder = Shapes(config=config, data_dir=default_data_dir(data_dir), file_format="array_record")
  if builder.data_path.exists():  # the test download_and_prepare makes before reusing a set
    builder.download_and_prepare()
    return builder
  print(f"generating the shapes/{config} data set in {builder.data_dir} (once) ...", file=sys.stderr, flush=True)
  start = time.perf_counter()
  with _quiet_tfds() as captured:
    builder.download_and_prepare()
  if captured.getvalue().strip():
    logging.getLogger(__name__).info("tfds: %s", captured.getvalue().strip())
  sizes = ", ".join(f"{split} {info.num_examples}" for split, info in builder.info.splits.items())
  print(f"generated shapes/{config} ({sizes} images) in {time.perf_counter() - start:.0f} s", file=sys.stderr,
        flush=True)
  return builder


@contextlib.contextmanager
def _quiet_tfds():
  """Yields a buffer holding what tfds prints to stdout, with its progress bars off, for the duration."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  active = getattr(tqdm_utils, "_active", True)
  tqdm_utils.display_progress_bar(False)
  captured = io.StringIO()
  try:
    with contextlib.redirect_stdout(captured):
      yield captured
  finally:
    tqdm_utils.display_progress_bar(active)


class ShapesSource(DetectionSource):
  """Split `split` ("train", "validation", "test") of the `shapes` set; example `k` has image id `k + 1`.

  Boxes are tight around each object's visible pixels; `coco_ground_truth()` gives each object's visible pixel count
  as its `area` (COCO's segmentation area), read from the stored annotations without decoding images.
  """

  def __init__(self, split: str, *, config: str = "default", data_dir: str | os.PathLike | None = None):
    builder = prepare_shapes(config=config, data_dir=data_dir)
    self.split = split
    self.config = builder.builder_config
    self._records = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> Example:
    record = self._records[range(len(self))[index]]
    image = np.asarray(Image.open(io.BytesIO(record["image"])).convert("RGB"))
    return make_example(image, record["boxes"], record["labels"], image_id=int(record["image_id"]))

  @property
  def class_names(self) -> Sequence[str]:
    return CLASS_NAMES

  def coco_ground_truth(self) -> Mapping[str, Any]:
    """Returns the split as a COCO dict; `area` is the visible pixel count, annotation ids count from 1."""
    size = self.config.image_size
    images, annotations = [], []
    for record in self._records.__getitems__(range(len(self))):
      image_id = int(record["image_id"])
      images.append({"id": image_id, "height": size, "width": size, "file_name": f"{image_id}.png"})
      for (x1, y1, x2, y2), label, area in zip(record["boxes"].tolist(), record["labels"].tolist(),
                                               record["areas"].tolist()):
        annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}
