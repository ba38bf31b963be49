"""The `shapes` tensorflow-datasets builder: a deterministic detection set generated from a seed.

Five classes (`CLASS_NAMES`: rectangle, ellipse, triangle, cross, ring) on textured backgrounds, sizes spanning COCO's
small / medium / large ranges, partial occlusion, 1..`max_objects` objects per image and some empty images (see
`render.py`). Example `k` of a split is rendered from `np.random.default_rng([seed, split_id, k])` alone, so the set
does not depend on generation order or worker count. Bytes are identical run to run with one NumPy build; another
machine may round `exp` / `sin` / `cos` differently in the last bit and so differ in a few pixels.

Stored as array_record without TensorFlow: the image is PNG bytes encoded with PIL (`tfds.features.Image` would
need TensorFlow's encoder), boxes, labels and areas are plain tensors, and shuffling is disabled so that record `k`
is example `k` (image id `k + 1`).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxdet.data.shapes.render import CLASS_NAMES, SceneSpec, render_scene

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False, kw_only=True)
class ShapesConfig(tfds.core.BuilderConfig):
  """A `shapes` variant: image size, examples per split, objects per image, object sizes, seed.

  `size_range` is the (min, max) of an object's sqrt(width * height) as a fraction of `image_size`.
  """

  image_size: int = 128
  num_train: int = 6000
  num_validation: int = 500
  num_test: int = 500
  max_objects: int = 6
  size_range: tuple[float, float] = (0.06, 0.9)
  seed: int = 0

  def num_examples(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation, "test": self.num_test}[split]

  def scene_spec(self) -> SceneSpec:
    return SceneSpec(image_size=self.image_size, max_objects=self.max_objects, min_size=self.size_range[0],
                     max_size=self.size_range[1])


CONFIGS = (
    ShapesConfig(name="default", description="128x128, 6000 / 500 / 500 images, up to 6 objects."),
    ShapesConfig(name="large", image_size=256, description="256x256, 6000 / 500 / 500 images, up to 6 objects."),
    ShapesConfig(name="tiny", image_size=64, num_train=48, num_validation=12, num_test=12,
                 description="64x64, 48 / 12 / 12 images, for tests."),
)


def encode_png(image: np.ndarray) -> bytes:
  """Returns PNG bytes of a uint8 `[H, W, 3]` image (lossless, so boxes stay tight around the stored pixels)."""
  buffer = io.BytesIO()
  # Level 1: the noisy textures barely compress further, and encoding stays a small part of generation time.
  Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def render_example(config: ShapesConfig, split: str, index: int) -> dict[str, np.ndarray]:
  """Returns example `index` of `split` as stored: PNG `image`, `image_id`, `boxes`, `labels`, `areas`."""
  rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
  scene = render_scene(rng, config.scene_spec())
  return {"image": encode_png(scene.image), "image_id": np.int64(index + 1), "boxes": scene.boxes,
          "labels": scene.labels.astype(np.int64), "areas": scene.areas}


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Builder of the embedded `shapes` detection set (tfds name `shapes`, configs `default`, `large`, `tiny`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Five classes, textured backgrounds, occlusion, tight boxes and visible areas."}
  BUILDER_CONFIGS = list(CONFIGS)

  # Nothing (checksums, metadata) lives beside this code. tfds' default `code_path` probes the package with
  # `importlib_resources`, which tfds' own metadata requires only before Python 3.9, and fails without it.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "image_id": tfds.features.Scalar(dtype=np.int64),
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "areas": tfds.features.Tensor(shape=(None,), dtype=np.int64),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    for index in range(self.builder_config.num_examples(split)):
      yield index, render_example(self.builder_config, split, index)
