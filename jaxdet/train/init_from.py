"""Starting a run from another run's checkpoint: the whole model, parts of it, or parts under other names.

Used by Faster R-CNN's 4-step alternating training (each step starts from the previous step's network; step 2
carries step 1's backbone as its frozen proposal network) and by any fine-tuning. Only the model's variables
(`params`, `batch_stats`) are read; the optimiser starts fresh.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Sequence

import jax
import numpy as np

from jaxdet.train.checkpoint import Checkpointer
from jaxdet.train.optim import path_name

COLLECTIONS = ("params", "batch_stats")


def checkpoint_step(checkpointer: Checkpointer, which: str | int, where: str) -> int:
  """Returns the step of checkpoint `which` ("latest", "best" by AP, or a step number), or raises naming `where`."""
  if which == "latest":
    step = checkpointer.latest_step()
  elif which == "best":
    step = checkpointer.best_step()
  else:
    step = int(which)
    if step not in checkpointer.all_steps():
      raise FileNotFoundError(f"no checkpoint at step {step} in {where}; have {checkpointer.all_steps()}")
  if step is None:
    raise FileNotFoundError(f"no {which} checkpoint in {where}")
  return step


def _renamed(path: str, rename: Sequence[tuple[str, str]]) -> str:
  for dst, src in rename:
    if path == dst or path.startswith(dst + "/"):
      return src + path[len(dst):]
  return path


def initialize_from(variables: dict[str, Any], *, workdir: str, checkpoint: str | int = "latest",
                    rename: Sequence[str] = (), include: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
  """Returns `(variables, report)`: `variables` with arrays taken from a checkpoint of the run in `workdir`.

  Args:
    variables: `{"params": ..., "batch_stats": ...}` of the new model (freshly initialised).
    workdir: the earlier run's work directory (its `checkpoints/` folder is read).
    checkpoint: "latest", "best" (by validation AP) or a step number.
    rename: "new=old" module-path prefixes: the new model's `new/...` arrays come from the checkpoint's `old/...`
      (e.g. "proposer_backbone=backbone"). Paths are "/"-joined module names within a collection.
    include: regular expressions (matched from the start) of the new model's paths to take; empty takes every
      path the checkpoint has. A path that `include` selects but the checkpoint lacks is an error.

  An array whose saved shape differs from the new model's raises ValueError naming it. `report` holds the step,
  the number of arrays loaded and the top-level modules kept fresh.
  """
  pairs = []
  for item in rename:
    if "=" not in item:
      raise ValueError(f"init_from.rename entries are 'new=old' module prefixes, got {item!r}")
    dst, src = (part.strip().strip("/") for part in item.split("=", 1))
    pairs.append((dst, src))
  patterns = [re.compile(p) for p in include]
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  step = checkpoint_step(checkpointer, checkpoint, os.path.join(workdir, "checkpoints"))
  saved = checkpointer.restore_raw(step)
  checkpointer.close()
  source = {}
  for collection in COLLECTIONS:
    for path, leaf in jax.tree_util.tree_leaves_with_path(saved.get(collection, {})):
      source[f"{collection}/{path_name(path)}"] = leaf

  loaded, fresh = 0, set()

  def take(collection: str, path: tuple[Any, ...], leaf: Any) -> Any:
    nonlocal loaded
    name = path_name(path)
    wanted = not patterns or any(p.match(name) for p in patterns)
    key = f"{collection}/{_renamed(name, pairs)}"
    if not wanted or key not in source:
      if wanted and patterns:
        raise KeyError(f"init_from: {workdir} step {step} has no {key} for the new model's {collection}/{name}")
      fresh.add(name.split("/")[0])
      return leaf
    value = source[key]
    if np.shape(value) != np.shape(leaf):
      raise ValueError(f"init_from: {key} in {workdir} step {step} has shape {np.shape(value)}, the new model's "
                       f"{collection}/{name} has {np.shape(leaf)}")
    loaded += 1
    return jax.numpy.asarray(value, dtype=np.asarray(leaf).dtype)

  out = dict(variables)
  for collection in COLLECTIONS:
    if collection in variables:
      out[collection] = jax.tree_util.tree_map_with_path(lambda p, l, c=collection: take(c, p, l),
                                                         variables[collection])
  if loaded == 0:
    raise ValueError(f"init_from: nothing of {workdir} step {step} matches the new model (rename={list(rename)}, "
                     f"include={list(include)})")
  report = {"step": step, "loaded": loaded, "fresh": sorted(fresh)}
  logging.info("initialised %d arrays from %s step %d; fresh: %s", loaded, workdir, step, report["fresh"] or "none")
  return out, report
