"""The setup the Faster R-CNN inference benchmarks share: a config at one image size, one batch of its test split,
the detector, and the variables of a run's best checkpoint (or freshly initialised ones). No torch here."""

from __future__ import annotations

from typing import Any

from jaxdet.train import inputs
from jaxdet.train.loop import build_model, initial_state, restore_variables


def sized_batch_and_variables(config: Any, workdir: str | None, *, size: int, batch_size: int):
  """Returns `(config, source, batch, detector, variables)`: `config` with square `size` images and `batch_size`
  evaluation batches, its `test` source and first batch (the evaluation transform: letterboxed uint8 images), the
  detector, and the best checkpoint's variables of `workdir` (initialised ones when `workdir` is None or empty)."""
  config = config.copy_and_resolve_references()
  config.data.image_size = size
  config.eval_batch_size = batch_size
  source = inputs.build_source(config, "test")
  batch = next(iter(inputs.eval_loader(config, source)))
  detector = build_model(config, source.num_classes)
  if workdir:
    variables, _ = restore_variables(config, workdir, detector, which="best")
  else:
    variables = initial_state(config, detector)[0].variables()
  return config, source, batch, detector, variables
