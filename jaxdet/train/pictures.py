"""The pictures of an evaluation: the first N images of a split with their detections and ground truth, drawn.

`PictureSampler` holds the first `num_images` examples of the split (read once) and, during each evaluation pass
(`evaluate_split(..., pictures=sampler)`), keeps their detections; `write_pictures` draws them into one grid
(`jaxdet.eval.pictures.detection_grid`: ground truth dashed, detections in class colours, false positives and
missed objects marked at IoU 0.5) and writes it as `WORKDIR/detections_<split>.png`, overwritten at every
evaluation with the step in its title, and as the TensorBoard image `val/detections` at that step, so the event
file keeps the history. Config keys (all optional, for old configs): `num_pictures` (8; 0 turns pictures off),
`picture_score_threshold` (0.3), `picture_min_side` (512, the short side of each drawn image), `picture_columns` (4).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from jaxdet.data.source import DetectionSource
from jaxdet.data.visualize import encode_png
from jaxdet.eval.pictures import PictureInput, detection_grid
from jaxdet.train.writers import MetricWriter

DETECTION_KEYS = ("boxes", "scores", "classes", "valid")


class PictureSampler:
  """Collects the detections of the first `num_images` examples of `source` from `predict_split`'s batches.

  Examples are found by `image_id`, so the order in which batches arrive (hosts, padding) does not matter.
  """

  def __init__(self, source: DetectionSource, num_images: int, *, score_threshold: float = 0.3,
               min_side: int = 512, columns: int = 4):
    self.examples = [source[i] for i in range(min(int(num_images), len(source)))]
    self.class_names = list(source.class_names)
    self.score_threshold, self.min_side, self.columns = float(score_threshold), int(min_side), int(columns)
    self._position = {int(ex["image_id"]): k for k, ex in enumerate(self.examples)}
    self._detections: dict[int, dict[str, np.ndarray]] = {}

  def reset(self) -> None:
    """Forgets the detections of the previous pass."""
    self._detections = {}

  def add(self, meta: Mapping[str, np.ndarray], dets: Mapping[str, np.ndarray]) -> None:
    """Keeps the detections of the sampled images in one batch (`meta`, `dets` as `predict_split` yields them)."""
    for b in np.nonzero(np.asarray(meta["example_valid"]))[0]:
      position = self._position.get(int(meta["image_id"][b]))
      if position is not None:
        self._detections[position] = {k: np.asarray(dets[k][b]) for k in DETECTION_KEYS}

  def items(self) -> list[PictureInput]:
    """Returns the sampled images whose detections arrived, in source order, ready for `detection_grid`."""
    out = []
    for position in sorted(self._detections):
      ex, dets = self.examples[position], self._detections[position]
      out.append(PictureInput(image=ex["image"], image_id=int(ex["image_id"]), gt_boxes=ex["boxes"],
                              gt_labels=ex["labels"], gt_crowd=ex["crowd"], **dets))
    return out


def make_picture_sampler(config: Any, source: DetectionSource) -> PictureSampler | None:
  """Returns the `PictureSampler` the config asks for (module docstring), or None when `num_pictures` is 0."""
  num = int(config.get("num_pictures", 8))
  if num <= 0:
    return None
  return PictureSampler(source, num, score_threshold=config.get("picture_score_threshold", 0.3),
                        min_side=config.get("picture_min_side", 512), columns=config.get("picture_columns", 4))


def write_pictures(sampler: PictureSampler, directory: str, split: str, *, step: int,
                   writer: MetricWriter | None = None, tag: str = "val/detections") -> str | None:
  """Returns the path of `DIR/detections_<split>.png` after drawing the sampled images into it (and to `writer`).

  Returns None, writing nothing, when no sampled image has detections yet (no evaluation pass since `reset`).
  """
  items = sampler.items()
  if not items:
    return None
  grid = detection_grid(items, class_names=sampler.class_names, score_threshold=sampler.score_threshold,
                        min_side=sampler.min_side, columns=sampler.columns,
                        title=f"{split} · step {step} · the first {len(items)} images")
  png = encode_png(grid)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"detections_{split}.png")
  with open(path + ".tmp", "wb") as f:
    f.write(png)
  os.replace(path + ".tmp", path)  # a viewer never reads half a file
  if writer is not None:
    writer.write_image(step, tag, png)
  return path
