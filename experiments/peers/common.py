"""What every torchvision peer shares: jaxdet's data as torch tensors, the training loop, and evaluation by jaxdet.eval.

A peer is a file `experiments/peers/<name>.py` that builds a torchvision detector from a jaxdet config and calls
`main(build, name)`; everything else is here, so that the peer trains on what the jaxdet run trains on:
- the same config file (`--config=experiments/configs/<name>_shapes.py`, `--config.x=y` overrides): image size,
  batch, steps, optimiser and schedule, data and augmentation, the model's sizes;
- the same batches in the same order: jaxdet's grain loader (`jaxdet.train.inputs.train_loader`, seeded by
  `config.seed`), converted by `to_torch` (images to float [0, 1] NCHW, torchvision normalises them with the same
  ImageNet statistics; boxes that are valid, not crowd and non-empty; labels + `label_offset`);
- the same schedule: `jaxdet.train.optim.make_schedule` sampled at every step, Adam / AdamW / SGD with the same
  hyper-parameters, gradients clipped to the same global norm; torchvision's own loss normalisation;
- the same selection and scoring: validation AP every `eval_every` steps (and at the end) picks the best weights,
  which are scored on `--split` (test) by `jaxdet.eval` (pycocotools-equal) through `jaxdet.train.evaluate`'s
  `write_evaluation`, so `eval_<split>.json` has eval.py's format.
Outputs go to `--workdir` (default `runs/peers/<config>/seed<k>`, <config> the config file's name, where
`experiments/peers/compare.py` reads them): `metrics.jsonl` (train/loss, train/images_per_second, val/AP ... as
jaxdet's trainer writes them), `eval_validation.json`, `eval_test.json`, `results_*.json`, `best.pt` and
`train_summary.json` (wall time, images/s). Needs torch and torchvision (the peer
environment), never a jaxdet requirement.

  python experiments/peers/retinanet.py --config=experiments/configs/retinanet_shapes.py --config.seed=1
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np

# OpenMP threads that sleep at barriers instead of spinning: on a machine shared with other jobs, spinning threads
# wait for descheduled siblings and a 2-thread training step ran ~40x slower (0.8 against 41 images/s, measured).
# It must be set before torch loads OpenMP, so peer scripts import this module first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxdet.data.source import to_original_frame  # noqa: E402
from jaxdet.eval import CocoEvaluator  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.evaluate import write_evaluation  # noqa: E402
from jaxdet.train.optim import make_schedule  # noqa: E402
from jaxdet.train.progress import Progress  # noqa: E402
from jaxdet.train.writers import MetricWriter  # noqa: E402

CONFIG = config_flags.DEFINE_config_file("config", None, "jaxdet config file (experiments/configs/NAME.py).")
WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/peers/<config file name>/seed<k>).")
SPLIT = flags.DEFINE_string("split", "test", "Split the best weights are scored on.")
THREADS = flags.DEFINE_integer("threads", 0, "torch intra-op threads (0: one per core).")


def to_torch(batch: dict[str, np.ndarray], *, label_offset: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
  """Returns torchvision's detector inputs for a jaxdet batch: images `[3, H, W]` float in [0, 1] and per-image
  targets `{"boxes": [k, 4] float32 xyxy pixels, "labels": [k] int64}`.

  Only valid, non-crowd, non-empty boxes are kept (torchvision has no crowd regions and rejects empty boxes);
  labels are jaxdet's contiguous classes plus `label_offset` (1 for detectors whose class 0 is background).
  """
  images = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2).float().div_(255.0)
  targets = []
  for boxes, labels, valid, crowd in zip(batch["boxes"], batch["labels"], batch["valid"], batch["crowd"]):
    keep = valid & ~crowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    targets.append({"boxes": torch.from_numpy(np.asarray(boxes[keep], np.float32)),
                    "labels": torch.from_numpy(np.asarray(labels[keep], np.int64) + label_offset)})
  return list(images), targets


def predict_arrays(model: torch.nn.Module, batch: dict[str, np.ndarray], *, label_offset: int = 0,
                   max_detections: int = 100) -> dict[str, np.ndarray]:
  """Returns the model's detections on a batch, padded to `max_detections` slots like jaxdet's `Detections`, with
  boxes mapped to stored-image pixels (as `jaxdet.train.evaluate.predict_split`): `boxes [B, K, 4]`, `scores`,
  `classes` (jaxdet's contiguous labels), `valid` (False on padding and on padded examples)."""
  images, _ = to_torch(batch)
  with torch.no_grad():
    outputs = model(images)
  b = len(outputs)
  boxes = np.zeros((b, max_detections, 4), np.float32)
  scores = np.zeros((b, max_detections), np.float32)
  classes = np.zeros((b, max_detections), np.int32)
  valid = np.zeros((b, max_detections), bool)
  for i, out in enumerate(outputs):
    k = min(len(out["scores"]), max_detections)
    boxes[i, :k] = out["boxes"][:k].numpy()
    scores[i, :k] = out["scores"][:k].numpy()
    classes[i, :k] = out["labels"][:k].numpy() - label_offset
    valid[i, :k] = True
  boxes = to_original_frame(boxes, batch["frame"])
  h = batch["orig_size"][:, 0, None].astype(np.float32)
  w = batch["orig_size"][:, 1, None].astype(np.float32)
  boxes = np.stack([np.clip(boxes[..., 0], 0, w), np.clip(boxes[..., 1], 0, h), np.clip(boxes[..., 2], 0, w),
                    np.clip(boxes[..., 3], 0, h)], axis=-1)
  return {"boxes": boxes, "scores": scores, "classes": classes, "valid": valid & batch["example_valid"][:, None]}


def evaluate(model: torch.nn.Module, config: Any, split: str, *, label_offset: int = 0, source=None,
             ground_truth=None) -> CocoEvaluator:
  """Returns a `CocoEvaluator` holding the model's detections on every example of `split` (eval mode)."""
  source = source if source is not None else inputs.build_source(config, split)
  evaluator = CocoEvaluator(ground_truth or source.coco_ground_truth(), source.category_ids)
  was_training = model.training
  model.eval()
  for batch in inputs.eval_loader(config, source):
    dets = predict_arrays(model, batch, label_offset=label_offset,
                          max_detections=config.model.get("max_detections", 100))
    evaluator.add(batch["image_id"], dets["boxes"], dets["scores"], dets["classes"], dets["valid"])
  model.train(was_training)
  return evaluator


def make_optimizer(model: torch.nn.Module, optim: Any) -> torch.optim.Optimizer:
  """Returns the torch optimiser of `config.optim` with learning rate 1 (the schedule multiplies it per step);
  weight decay, where there is some, applies to kernels only, as `jaxdet.train.optim.decay_mask`."""
  decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
  rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
  wd = float(optim.get("weight_decay", 0.0) or 0.0)
  groups = [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
  if optim.optimizer == "adam":
    if wd:
      raise ValueError("config.optim.weight_decay needs adamw or sgd")
    return torch.optim.Adam(groups, lr=1.0, eps=1e-8)
  if optim.optimizer == "adamw":
    return torch.optim.AdamW(groups, lr=1.0, eps=1e-8)
  if optim.optimizer == "sgd":
    return torch.optim.SGD(groups, lr=1.0, momentum=float(optim.get("momentum", 0.9)))
  raise ValueError(f"config.optim.optimizer must be adam, adamw or sgd, got {optim.optimizer!r}")


def train_and_evaluate(model: torch.nn.Module, config: Any, workdir: str, *, split: str = "test",
                       label_offset: int = 0) -> dict[str, float]:
  """Trains `model` on `config`'s data and schedule, keeps the weights of best validation AP, scores them on
  `split`, and returns those metrics (also in `workdir/eval_<split>.json`). `model` must be a torchvision
  detector: in training mode `model(images, targets)` returns a dict of losses, in eval mode detections."""
  if config.get("frozen") or config.optim.get("frozen"):
    raise ValueError("the peer loop does not freeze parameters")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  torch.manual_seed(config.seed)
  train_source = inputs.build_source(config, config.data.train_split)
  eval_source = inputs.build_source(config, config.data.eval_split)
  eval_truth = eval_source.coco_ground_truth()
  batches = iter(inputs.train_loader(config, train_source))
  optimizer = make_optimizer(model, config.optim)
  schedule = make_schedule(config.optim, config.total_steps)
  rates = np.asarray(jax.jit(jax.vmap(schedule))(np.arange(config.total_steps)), np.float64)
  clip = float(config.optim.get("grad_clip_norm", 0) or 0)
  writer = MetricWriter(workdir)
  progress = Progress(config.total_steps)
  best = (-1.0, 0, None)
  model.train()
  start = time.time()
  step_seconds, timed_images = 0.0, 0
  for step in range(1, config.total_steps + 1):
    step_start = time.time()
    images, targets = to_torch(next(batches), label_offset=label_offset)
    for group in optimizer.param_groups:
      group["lr"] = float(rates[step - 1])  # jaxdet's step k uses schedule(k - 1), the count before it
    losses = model(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))
    optimizer.step()
    if not torch.isfinite(loss):
      raise FloatingPointError(f"non-finite loss at step {step}: { {k: float(v) for k, v in losses.items()} }")
    if step > 1:  # the first step (allocation, warm-up) is not training speed
      step_seconds += time.time() - step_start
      timed_images += len(images)
    metrics = {"loss": float(loss), **{k: float(v) for k, v in losses.items()}, "grad_norm": float(grad_norm),
               "learning_rate": float(rates[step - 1])}
    if step % config.log_every == 0 or step == config.total_steps:
      progress.update(step, images=len(images), metrics=metrics)
      writer.write(step, metrics | {"images_per_second": progress.images_per_second}, prefix="train/")
    else:
      progress.update(step, images=len(images))
    if step % config.eval_every == 0 or step == config.total_steps:
      evaluator = evaluate(model, config, config.data.eval_split, label_offset=label_offset, source=eval_source,
                           ground_truth=eval_truth)
      val = write_evaluation(evaluator, workdir, config.data.eval_split, step=step)
      writer.write(step, val, prefix="val/")
      progress.write(f"step {step}: validation AP {val['AP']:.4f}\n{evaluator.summary()}")
      if val["AP"] > best[0]:
        best = (val["AP"], step, copy.deepcopy(model.state_dict()))
  train_seconds = time.time() - start
  progress.close()
  model.load_state_dict(best[2])
  torch.save(best[2], os.path.join(workdir, "best.pt"))
  metrics = write_evaluation(evaluate(model, config, split, label_offset=label_offset), workdir, split, step=best[1])
  writer.write(best[1], metrics, prefix=f"eval_{split}/")
  writer.close()
  # wall_seconds: the whole loop with its validation passes; images_per_second: loading + training steps only.
  summary = {"wall_seconds": train_seconds, "steps": config.total_steps, "batch_size": config.batch_size,
             "images_per_second": timed_images / max(step_seconds, 1e-9), "best_step": best[1],
             "best_val_AP": best[0], "torch": torch.__version__, "threads": torch.get_num_threads()}
  with open(os.path.join(workdir, "train_summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print(f"best validation AP {best[0]:.4f} at step {best[1]}; {split}:")
  print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
  return metrics


def main(build: Callable[[Any, int], torch.nn.Module], *, label_offset: int = 0) -> None:
  """The command line of a peer: `build(config, num_classes)` makes the torchvision detector. Its default workdir is
  named after the config file, as the zoo's rows are, so that `compare.py` pairs the two."""

  def run(argv):
    del argv
    config = CONFIG.value
    if THREADS.value:
      torch.set_num_threads(THREADS.value)
    config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
    workdir = WORKDIR.value or os.path.join("runs/peers", config_name, f"seed{config.seed}")
    num_classes = inputs.build_source(config, config.data.train_split).num_classes
    model = build(config, num_classes)
    train_and_evaluate(model, config, workdir, split=SPLIT.value, label_offset=label_offset)

  flags.mark_flags_as_required(["config"])
  app.run(run)
