"""Checkpoints: orbax `CheckpointManager` holding the train state and the data loader's position together.

Saves are asynchronous (training continues while the files are written). Kept: the newest `keep_last`
checkpoints plus the `keep_best` best by a metric (COCO AP by default) among those saved with metrics. A run
resumes from the newest checkpoint: the state and the grain iterator come back to the same step, so the resumed run
sees exactly the batches an unbroken run would (no replay, no skip).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

_TRACKED_METRIC_WARNING = "Requested `tracked_metric`; did not provide metrics."


class _QuietPeriodicSaves(logging.Filter):
  """Periodic saves between evaluations carry no metrics by design; orbax warns about each one."""

  def filter(self, record: logging.LogRecord) -> bool:
    return _TRACKED_METRIC_WARNING not in record.getMessage()


_QUIET = _QuietPeriodicSaves()


class Checkpointer:
  """Saves and restores `{state, loader}` under `directory` (see the module docstring).

  Args:
    directory: where step folders go (created).
    keep_last: how many of the newest checkpoints to keep.
    keep_best: how many of the best checkpoints by `best_metric` to keep besides.
    best_metric: the metric key that ranks checkpoints (higher is better).
    async_save: write in a background thread.
  """

  def __init__(self, directory: str | os.PathLike[str], *, keep_last: int = 2, keep_best: int = 1,
               best_metric: str = "AP", async_save: bool = True):
    logging.getLogger("absl").addFilter(_QUIET)  # idempotent: a logger holds a filter once
    self.best_metric = best_metric
    policy = preservation_policy.AnyPreservationPolicy([
        preservation_policy.LatestN(keep_last),
        preservation_policy.BestN(get_metric_fn=lambda m: m[best_metric], n=keep_best,
                                  keep_checkpoints_without_metrics=False),
    ])
    # The preservation policy decides what is kept; `best_fn` is still needed for `best_step()`.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=lambda m: m[best_metric],
                                           best_mode="max", enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """Returns the step with the highest `best_metric` among checkpoints saved with metrics, else None."""
    with_metrics = [s for s in self._manager.all_steps() if self._manager.metrics(s)]
    return self._manager.best_step() if with_metrics else None

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, loader: Any = None, metrics: Mapping[str, float] | None = None,
           force: bool = False) -> None:
    """Saves `state` (a pytree) and, when given, the grain iterator `loader`, with optional `metrics`."""
    items = {"state": ocp.args.StandardSave(state)}
    if loader is not None:
      items["loader"] = grain.checkpoint.CheckpointSave(loader)
    metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)

  def restore(self, step: int, state_template: Any, *, loader: Any = None) -> Any:
    """Returns the state saved at `step` (shaped like `state_template`); restores `loader` in place when given."""
    items = {"state": ocp.args.StandardRestore(state_template)}
    if loader is not None:
      items["loader"] = grain.checkpoint.CheckpointRestore(loader)
    return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def restore_subtree(self, step: int, template: Mapping[str, Any]) -> dict[str, Any]:
    """Returns only the top-level fields of the saved state that `template` names (e.g. `params`, `batch_stats`).

    The rest of the state (optimiser moments, step, key) is not read, so a model's variables come back whatever
    optimiser trained them. `template`'s leaves give shapes and dtypes; a saved shape that differs raises
    ValueError naming the leaf.
    """
    template = dict(template)
    args = ocp.args.PyTreeRestore(item=template, restore_args=ocp.checkpoint_utils.construct_restore_args(template),
                                  partial_restore=True)
    restored = self._manager.restore(step, args=ocp.args.Composite(state=args))["state"]
    expected = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(template)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(restored):
      want = expected.get(jax.tree_util.keystr(path))
      if want is None or np.shape(want) != np.shape(leaf):
        raise ValueError(f"checkpoint step {step} has {jax.tree_util.keystr(path)} of shape {np.shape(leaf)}, "
                         f"the model expects {None if want is None else np.shape(want)} (a different model config?)")
    return restored

  def restore_raw(self, step: int) -> dict[str, Any]:
    """Returns the state saved at `step` as saved (nested dicts of NumPy arrays), without a template."""
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))["state"]
    return jax.tree.map(np.asarray, restored)

  def wait(self) -> None:
    """Blocks until background saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
