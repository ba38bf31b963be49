"""Timing helpers shared by the train-step benchmarks (`train_step.py`, `detector_steps.py`)."""

from __future__ import annotations

import time
from typing import Any, Callable

import jax


def step_runner(compiled: Callable[[Any, Any], tuple[Any, Any]], state: Any, batch: Any) -> Callable[[int], float]:
  """Returns `run(n) -> seconds`: `n` steps of `compiled(state, batch) -> (state, metrics)`, each from the state the
  previous one returned (so a step that donates its state runs as in training), timed until the last metrics are
  ready. The first call continues from `state`."""
  holder = [state]

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      holder[0], metrics = compiled(holder[0], batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  return run
