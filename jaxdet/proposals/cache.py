"""Proposals of a whole split, computed once in a process pool and cached beside the data set.

Cache file (`np.savez`): `image_id [N]` int64, `counts [N]` int64, `boxes [sum(counts), 4]` float32 xyxy in
stored-image pixels, ranked best first per image (image n's are rows `offsets[n]:offsets[n + 1]`), `seconds [N]`
(wall time of each image's search in its worker), and `settings` (a JSON string: method, mode, k_scale, ...). A
cache whose settings differ from the request is an error naming the file, never silently reused. Files are written
to a temporary name and renamed, so an interrupted computation leaves no half cache.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from typing import Any, Mapping

import numpy as np

from jaxdet.proposals.selective_search import selective_search


def proposal_cache_path(data_dir: str, dataset: str, split: str, *, mode: str) -> str:
  """Returns `<data_dir>/proposals/<dataset>/selective_search_<mode>/<split>.npz`."""
  return os.path.join(data_dir, "proposals", dataset, f"selective_search_{mode}", f"{split}.npz")


def _search(job: tuple[np.ndarray, int, Mapping[str, Any]]) -> tuple[np.ndarray, float]:
  image, image_id, options = job
  start = time.perf_counter()
  boxes = selective_search(image, seed=image_id, **options)
  return boxes, time.perf_counter() - start


def compute_proposals(source, *, mode: str = "fast", k_scale: float | str = "linear",
                      max_proposals: int | None = None, workers: int | None = None,
                      limit: int | None = None, show_progress: bool = True) -> dict[str, np.ndarray]:
  """Returns the cache arrays (module docstring) of selective search over every example of `source`.

  Runs `workers` processes (default: the CPU count; 0: in this process) of a spawn-started pool (the parent may
  hold JAX's threads, which a fork would copy); the parent reads and decodes the images and the workers search.
  Each image's ranking is seeded by its image id. `limit`: only the first `limit` examples.
  """
  n = len(source) if limit is None else min(limit, len(source))
  options = {"mode": mode, "k_scale": k_scale, "max_proposals": max_proposals}

  def jobs():
    for i in range(n):
      example = source[i]
      yield example["image"], int(example["image_id"]), options

  image_ids = np.array([int(source[i]["image_id"]) for i in range(n)], np.int64) if n else np.zeros(0, np.int64)
  workers = os.cpu_count() if workers is None else workers
  results = []
  start = time.time()
  if workers == 0:
    iterator = map(_search, jobs())
    pool = None
  else:
    pool = multiprocessing.get_context("spawn").Pool(workers)
    iterator = pool.imap(_search, jobs(), chunksize=8)
  try:
    for k, result in enumerate(iterator):
      results.append(result)
      if show_progress and ((k + 1) % 200 == 0 or k + 1 == n):
        print(f"selective search ({mode}): {k + 1}/{n} images, {time.time() - start:.0f} s", flush=True)
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  counts = np.array([len(b) for b, _ in results], np.int64)
  boxes = np.concatenate([b for b, _ in results]) if results else np.zeros((0, 4), np.float32)
  return {"image_id": image_ids, "counts": counts, "boxes": boxes.astype(np.float32),
          "seconds": np.array([s for _, s in results], np.float64)}


def save_proposals(path: str, arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any]) -> None:
  """Writes the cache arrays and `settings` to `path` (atomically: a temporary file, then a rename)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, **arrays, settings=np.array(json.dumps(dict(settings), sort_keys=True)))
  os.replace(tmp, path)


def load_proposals(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Returns `(arrays, settings)` of a cache file; a missing or malformed file raises naming `path`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no proposal cache at {path}")
  with np.load(path) as z:
    missing = {"image_id", "counts", "boxes", "settings"} - set(z.files)
    if missing:
      raise ValueError(f"proposal cache {path} lacks {sorted(missing)} (has {sorted(z.files)})")
    arrays = {k: z[k] for k in ("image_id", "counts", "boxes", "seconds") if k in z.files}
    settings = json.loads(str(z["settings"]))
  if arrays["counts"].sum() != len(arrays["boxes"]) or len(arrays["counts"]) != len(arrays["image_id"]):
    raise ValueError(f"proposal cache {path} is inconsistent: {len(arrays['image_id'])} images, counts summing to "
                     f"{arrays['counts'].sum()}, {len(arrays['boxes'])} boxes")
  return arrays, settings


def cached_proposals(source, path: str, *, mode: str = "fast", k_scale: float | str = "linear",
                     max_proposals: int | None = None, workers: int | None = None,
                     show_progress: bool = True) -> dict[str, np.ndarray]:
  """Returns the cache arrays of `source` from `path`, computing and saving them first when the file is absent.

  An existing file made with other settings raises ValueError naming it (delete it, or change the data dir).
  """
  settings = {"method": "selective_search", "mode": mode, "k_scale": k_scale, "max_proposals": max_proposals,
              "num_images": len(source)}
  if os.path.exists(path):
    arrays, saved = load_proposals(path)
    if saved != json.loads(json.dumps(settings)):
      raise ValueError(f"proposal cache {path} was made with {saved}, not the requested {settings}; delete it to "
                       f"recompute")
    return arrays
  arrays = compute_proposals(source, mode=mode, k_scale=k_scale, max_proposals=max_proposals, workers=workers,
                             show_progress=show_progress)
  save_proposals(path, arrays, settings)
  return arrays
