"""The training loop: data-parallel steps, periodic evaluation, checkpoints, metrics, progress, resume.

One function, readable top to bottom (big_vision / Flax-examples style): build the detector, data and optimiser
from the config; restore the newest checkpoint in the work directory (state and loader position) or start fresh;
step; every `log_every` steps write metrics, every `eval_every` steps evaluate on the validation split and save
a checkpoint ranked by AP, every `checkpoint_every` steps save one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxdet import xla_cpu
from jaxdet.models import build_detector
from jaxdet.models.detector import Detector, init_detector
from jaxdet.train import inputs
from jaxdet.train.checkpoint import Checkpointer
from jaxdet.train.evaluate import evaluate_split, make_predict_fn, write_evaluation
from jaxdet.train.init_from import checkpoint_step, initialize_from
from jaxdet.train.optim import make_optimizer
from jaxdet.train.parallel import make_mesh, replicate, replicated, shard_batch, to_host
from jaxdet.train.pictures import make_picture_sampler, write_pictures
from jaxdet.train.prefetch import DevicePrefetcher
from jaxdet.train.progress import Progress
from jaxdet.train.state import TrainState, alters_step, create_train_state, train_step
from jaxdet.train.writers import MetricWriter

MODEL_KEYS = ("image", "boxes", "labels", "valid", "crowd")


def build_model(config: Any, num_classes: int) -> Detector:
  """Returns the detector named by `config.model.name`, with the rest of `config.model` as its options."""
  options = dict(config.model)
  return build_detector(options.pop("name"), num_classes=num_classes, **options)


def initial_state(config: Any, detector: Detector):
  """Returns `(state, tx, schedule)`: a fresh train state and the optimiser it was built with.

  With `config.init_from.workdir`, the model's variables start from that run's checkpoint (`initialize_from`:
  `checkpoint`, `rename`, `include`); the optimiser still starts fresh.
  """
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  state = create_train_state(detector, tx, image_shape=_image_shape(config), seed=config.seed)
  init = config.get("init_from") or {}
  if init.get("workdir"):
    variables, _ = initialize_from(state.variables(), workdir=init["workdir"],
                                   checkpoint=init.get("checkpoint", "latest"), rename=tuple(init.get("rename", ())),
                                   include=tuple(init.get("include", ())))
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"],
                          opt_state=tx.init(variables["params"]))
  return state, tx, schedule


def _image_shape(config: Any) -> tuple[int, int]:
  size = config.data.image_size
  return (size, size) if isinstance(size, int) else tuple(size)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) and returns the final validation metrics."""
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh()
  train_source = inputs.build_source(config, config.data.train_split)
  eval_source = inputs.build_source(config, config.data.eval_split)
  detector = build_model(config, train_source.num_classes)
  state, tx, schedule = initial_state(config, detector)
  loader = inputs.train_loader(config, train_source)
  batches = iter(loader)

  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep_last=config.keep_checkpoints)
  writer = MetricWriter(workdir, enabled=is_main)
  start = checkpointer.latest_step()
  if start is not None:
    state = checkpointer.restore(start, state, loader=batches)
    # Records after this line supersede any for the same steps written before the run was interrupted.
    writer.write(start, {"resumed": 1.0})
  state = replicate(state, mesh)
  augment = inputs.device_augment(config)  # None: the loader augmented on the host
  fields = (*MODEL_KEYS, *detector.inputs, *(("position",) if augment is not None else ()))

  def augment_and_step(state, batch, alter):
    batch = augment(batch) if augment is not None else batch
    return train_step(state, batch, detector=detector, tx=tx, schedule=schedule, alter=alter)

  # Two programs when the detector alters a fraction of the batches (SAT): the choice is made per step on the host.
  step_fn = xla_cpu.jit(augment_and_step, static_argnums=2, donate_argnums=0,
                        out_shardings=(replicated(mesh), replicated(mesh)))
  predict_fn = make_predict_fn(detector, flip_test=config.get("flip_test", False))

  progress = Progress(config.total_steps, initial=int(state.step), enabled=is_main)
  if start is not None:
    progress.write(f"resumed from step {start} in {workdir}")
  ground_truth = eval_source.coco_ground_truth()
  pictures = make_picture_sampler(config, eval_source) if is_main else None  # config.num_pictures, 0 = none

  def evaluate(state: TrainState, step: int) -> dict[str, float]:
    # Every process holds every detection (gathered), so each computes the same metrics; process 0 writes them.
    evaluator = evaluate_split(predict_fn, state.variables(), eval_source, inputs.eval_loader(config, eval_source),
                               mesh, ground_truth=ground_truth, show_progress=False, pictures=pictures)
    if not is_main:
      return evaluator.evaluate()
    metrics = write_evaluation(evaluator, workdir, config.data.eval_split, step=step)
    if pictures is not None:  # WORKDIR/detections_<split>.png and the TensorBoard image val/detections
      write_pictures(pictures, workdir, config.data.eval_split, step=step, writer=writer)
    progress.write(f"step {step}: validation ({config.data.eval_split})\n{evaluator.summary()}")
    writer.write(step, metrics, prefix="val/")
    return metrics

  def check_finite(metrics, step: int) -> None:
    # Before every save and log: a non-finite state is never checkpointed, and the run stops with a pointer to
    # the newest checkpoint, which is finite by this check.
    if not bool(to_host(metrics["finite"])):
      checkpointer.wait()
      raise FloatingPointError(f"non-finite loss, gradient or parameters at step {step} (loss "
                               f"{float(to_host(metrics['loss']))}); the newest checkpoint, step "
                               f"{checkpointer.latest_step()} in {workdir}, is finite")

  first = int(state.step)
  final_metrics: dict[str, float] = {}
  truncated = 0
  # config.prefetch_to_device batches wait on the mesh while a step runs (0: read and copy inline, as before).
  feed = DevicePrefetcher(batches, put=lambda batch: shard_batch({k: batch[k] for k in fields}, mesh),
                          size=config.get("prefetch_to_device", 0))
  try:  # the prefetch thread stops however the loop ends
    for step in range(first + 1, config.total_steps + 1):
      device_batch, batch = next(feed)
      state, metrics = step_fn(state, device_batch, alters_step(detector, config.seed, step))
      num_images = batch["image"].shape[0] * jax.process_count()
      truncated += int(np.sum(batch["num_truncated"]))
      if step % config.log_every == 0 or step == config.total_steps:
        check_finite(metrics, step)
        host = {k: float(v) for k, v in to_host(metrics).items() if k != "finite"}
        progress.update(step, images=num_images, metrics=host)
        # `truncated_boxes`: objects beyond max_boxes this host dropped since the last record (never silently).
        writer.write(step, host | {"images_per_second": progress.images_per_second, "truncated_boxes": truncated},
                     prefix="train/")
        truncated = 0
      else:
        progress.update(step, images=num_images)
      if step % config.eval_every == 0 or step % config.checkpoint_every == 0 or step == config.total_steps:
        check_finite(metrics, step)
      if step == first + 1:
        jax.block_until_ready(state)
        progress.restart_rate()  # the first step's compilation is not training speed
      if step % config.eval_every == 0 or step == config.total_steps:
        final_metrics = evaluate(state, step)
        checkpointer.save(step, state, loader=feed.consumed_state(), metrics={"AP": final_metrics["AP"]},
                          force=True)
      elif step % config.checkpoint_every == 0:
        checkpointer.save(step, state, loader=feed.consumed_state())
  finally:
    feed.close()
  if not final_metrics:  # resumed after the last step: evaluate what is there
    final_metrics = evaluate(state, int(state.step))
  checkpointer.wait()
  checkpointer.close()
  progress.close()
  writer.close()
  return final_metrics


def restore_variables(config: Any, workdir: str, detector: Detector, *, which: str = "latest") -> tuple[Any, int]:
  """Returns `(variables, step)` of a checkpoint in `workdir`: "latest", "best" (by AP) or a step number.

  Only the model's variables are read, so `config.optim` need not match the run that saved the checkpoint.
  """
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep_last=config.keep_checkpoints,
                              async_save=False)
  step = checkpoint_step(checkpointer, which, os.path.join(workdir, "checkpoints"))
  template = jax.jit(lambda: init_detector(detector, jax.random.PRNGKey(0), image_shape=_image_shape(config)))()
  variables = checkpointer.restore_subtree(step, {"params": template["params"],
                                                  "batch_stats": template.get("batch_stats", {})})
  checkpointer.close()
  return variables, step
