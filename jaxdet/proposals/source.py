"""`ProposalSource`: a `DetectionSource` whose examples carry cached per-image proposals, joined by image id.

Adds to each example (the layout of `jaxdet.data.source`):
  proposals       float32 `[P, 4]` xyxy pixels in the current image's frame, best-ranked first.
  proposal_valid  bool `[P]`: False on the padding after an image's last proposal, and (after geometric transforms)
                  on proposals that left the image.
`P = num_proposals` for every image (the top P of the cache, zero-padded), so batches have a fixed shape; geometric
transforms map proposals like boxes but clip instead of dropping them (`jaxdet.data.geometric`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from jaxdet.data.source import DetectionSource, Example, WrappedSource
from jaxdet.proposals.cache import cached_proposals, proposal_cache_path


class ProposalSource(WrappedSource):
  """`source` with the top `num_proposals` proposals of each image from cache `arrays` (see `proposals.cache`).

  Every image of `source` must be in the cache; a missing one raises KeyError naming the image id and `path`.
  """

  def __init__(self, source: DetectionSource, arrays: Mapping[str, np.ndarray], *, num_proposals: int,
               path: str = "<memory>"):
    if num_proposals <= 0:
      raise ValueError(f"num_proposals must be positive, got {num_proposals}")
    super().__init__(source)
    self.num_proposals = int(num_proposals)
    self.path = path
    counts = np.asarray(arrays["counts"], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    self._boxes = np.asarray(arrays["boxes"], np.float32)
    self._rows = {int(i): (int(offsets[n]), int(offsets[n] + min(counts[n], num_proposals)))
                  for n, i in enumerate(np.asarray(arrays["image_id"]).tolist())}

  def proposals_of(self, image_id: int) -> np.ndarray:
    """Returns float32 `[n, 4]` (n <= P) cached proposals of `image_id`, stored-image pixels, best first."""
    if int(image_id) not in self._rows:
      raise KeyError(f"image id {int(image_id)} has no proposals in {self.path} (a cache of another split or data "
                     f"set?)")
    start, stop = self._rows[int(image_id)]
    return self._boxes[start:stop]

  def __getitem__(self, index: int) -> Example:
    example = self.source[index]
    boxes = self.proposals_of(int(example["image_id"]))
    padded = np.zeros((self.num_proposals, 4), np.float32)
    padded[:len(boxes)] = boxes
    example["proposals"] = padded
    example["proposal_valid"] = np.arange(self.num_proposals) < len(boxes)
    return example


def dataset_key(data: Any) -> str:
  """Returns the folder name that identifies `config.data`'s images: `shapes_<config>`, or the root's base name."""
  if data.name == "shapes":
    return f"shapes_{data.get('shapes_config', 'default')}"
  if data.name == "tfds":
    return data.tfds_name.replace("/", "_")
  return os.path.basename(os.path.normpath(data.root)) or "data"


def with_proposals(source: DetectionSource, data: Any, split: str, *, show_progress: bool = True) -> ProposalSource:
  """Returns `source` joined with the cached proposals named by `data.proposals` (computed on first use).

  `data.proposals`: `method` ("selective_search"), `mode` (fast | quality), `k_scale`, `num` (P per image),
  `workers` (processes; 0 = in this process), `dir` (cache root; default the data dir, else the data root).
  """
  p = data.proposals
  if p.get("method", "selective_search") != "selective_search":
    raise ValueError(f"config.data.proposals.method must be selective_search, got {p.method!r}")
  from jaxdet.data.shapes.source import default_data_dir  # pylint: disable=g-import-not-at-top
  root = p.get("dir") or (default_data_dir(data.get("data_dir") or None) if data.name in ("shapes", "tfds")
                          else data.root)
  path = proposal_cache_path(root, dataset_key(data), split, mode=p.get("mode", "fast"))
  workers = p.get("workers", -1)
  arrays = cached_proposals(source, path, mode=p.get("mode", "fast"), k_scale=p.get("k_scale", "linear"),
                            workers=None if workers < 0 else workers, show_progress=show_progress)
  return ProposalSource(source, arrays, num_proposals=p.num, path=path)
