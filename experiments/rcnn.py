"""R-CNN's multi-stage training (Girshick et al. 2014; course A2-A4) from one command, resumable stage by stage.

  python experiments/rcnn.py --config=experiments/configs/rcnn_shapes.py --workdir=runs/rcnn_shapes

Stages (each skipped when its output is in WORKDIR, so a restart continues where it stopped):
  1. finetune  the CNN as a (C + 1)-way classifier on warped regions of the training images: minibatches of
               `batch_positives` regions at IoU >= 0.5 with a ground truth (the ground truth included) and
               `batch_negatives` background regions, uniformly over all images (WORKDIR/finetune/, orbax
               checkpoints every `checkpoint_every` steps; a restart resumes from the newest).
  2. features  fc7 and pool5 features of the proposals and ground truth of `feature_images` training images
               (WORKDIR/rcnn/features.npz).
  3. svm       one linear SVM per class on fc7 (positives: ground truth only; negatives: IoU < 0.3 with every
               instance of the class), hard negative mining (`jaxdet.models.heads.linear_svm`) (rcnn/svm.npz).
  4. bbox      ridge regression of (dx, dy, dw, dh) on pool5 from proposals with IoU > 0.6 (rcnn/bbox.npz).
  5. export    the detector's variables (CNN + SVMs + regressors) scored on the validation split through jaxdet.eval
               and saved as WORKDIR/checkpoints/<finetune_steps> with its AP, which eval.py / predict.py read.
As the paper, features are scaled to a mean L2 norm of 20 before the SVMs and regressors (folded into their
weights). `--from_workdir=DIR` links DIR's finished finetune / rcnn stages into WORKDIR, so a variant that differs
only at test time (`rcnn_softmax_shapes.py`: the softmax instead of the SVMs) is exported without retraining.
WORKDIR/rcnn/stages.json records each stage's wall time.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import flags as jflags  # noqa: E402
from experiments import machine  # noqa: E402
from jaxdet import xla_cpu  # noqa: E402
from jaxdet.data.transforms import eval_transform  # noqa: E402
from jaxdet.eval import format_summary  # noqa: E402
from jaxdet.models.detector import init_detector  # noqa: E402
from jaxdet.models.detectors.rcnn import RCNN  # noqa: E402
from jaxdet.models.heads.bbox_ridge import fit_bbox_regressors  # noqa: E402
from jaxdet.models.heads.linear_svm import train_svms  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.checkpoint import Checkpointer  # noqa: E402
from jaxdet.train.evaluate import evaluate_split, make_predict_fn, write_evaluation  # noqa: E402
from jaxdet.train.loop import build_model  # noqa: E402
from jaxdet.train.optim import make_optimizer  # noqa: E402
from jaxdet.train.parallel import make_mesh, replicate  # noqa: E402
from jaxdet.train.progress import Progress  # noqa: E402
from jaxdet.train.writers import MetricWriter  # noqa: E402

FROM_WORKDIR = flags.DEFINE_string("from_workdir", None, "Link this run's finished finetune / rcnn stages.")
STAGES = ("finetune", "features", "svm", "bbox", "export")
FEATURE_NORM = 20.0  # R-CNN scales features to this mean L2 norm for the SVMs


def pairwise_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Returns `[N, M]` IoU of xyxy boxes (NumPy; 0 where a box is empty)."""
  area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
  area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
  w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
  h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
  inter = w * h
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def region_database(source, *, image_size: int, num_proposals: int, num_classes: int,
                    limit: int | None = None) -> dict[str, np.ndarray]:
  """Returns the regions of the first `limit` images of `source` (a `ProposalSource`), in the network-input frame:

  `images [N, H, W, 3]` uint8; per region `image [R]`, `boxes [R, 4]`, `is_gt [R]` (the ground-truth boxes come
  first in each image, then its top `num_proposals` valid proposals), `iou [R]` and `gt_box [R, 4]` / `gt_label [R]`
  of its best ground truth (label -1 when the image has none), and `class_iou [R, C]` the largest IoU with an
  instance of each class. Crowd boxes are neither regions nor ground truth here.
  """
  n = len(source) if limit is None else min(limit, len(source))
  images, rows = [], []
  for i in range(n):
    ex = eval_transform(source[i], image_size)
    keep = ~ex["crowd"]
    gt, labels = ex["boxes"][keep], ex["labels"][keep]
    props = ex["proposals"][ex["proposal_valid"]][:num_proposals]
    boxes = np.concatenate([gt, props]).astype(np.float32)
    iou = pairwise_iou_np(boxes, gt) if len(gt) else np.zeros((len(boxes), 0))
    best = iou.argmax(axis=1) if len(gt) else np.zeros(len(boxes), np.int64)
    class_iou = np.zeros((len(boxes), num_classes), np.float32)
    for c in range(num_classes):
      if np.any(labels == c):
        class_iou[:, c] = iou[:, labels == c].max(axis=1)
    rows.append({"image": np.full(len(boxes), i, np.int32), "boxes": boxes,
                 "is_gt": np.arange(len(boxes)) < len(gt),
                 "iou": iou.max(axis=1) if len(gt) else np.zeros(len(boxes), np.float32),
                 "gt_box": gt[best] if len(gt) else np.zeros((len(boxes), 4), np.float32),
                 "gt_label": labels[best] if len(gt) else np.full(len(boxes), -1, np.int32),
                 "class_iou": class_iou})
    images.append(ex["image"])
  db = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  db["images"] = np.stack(images)
  return db


def finetune_labels(db: dict[str, np.ndarray], *, fg_threshold: float = 0.5) -> np.ndarray:
  """Returns int32 `[R]` fine-tuning labels: class + 1 at IoU >= `fg_threshold` with a ground truth, else 0."""
  return np.where(db["iou"] >= fg_threshold, db["gt_label"] + 1, 0).astype(np.int32)


def svm_labels(db: dict[str, np.ndarray], *, num_classes: int, negative_threshold: float = 0.3) -> np.ndarray:
  """Returns float32 `[R, C]`: +1 for the ground truth of class c, -1 below IoU `negative_threshold` with every
  instance of c, 0 (ignored) otherwise — R-CNN's SVM training set."""
  positive = db["is_gt"][:, None] & (db["gt_label"][:, None] == np.arange(num_classes)[None, :])
  negative = db["class_iou"] < negative_threshold
  return np.where(positive, 1.0, np.where(negative & ~positive, -1.0, 0.0)).astype(np.float32)


def sample_minibatch(labels: np.ndarray, *, rng: np.random.Generator, positives: int,
                     negatives: int) -> np.ndarray:
  """Returns `positives + negatives` region indices: foreground (label > 0) and background drawn uniformly
  (with replacement when there are fewer) — R-CNN's 32 + 96 fine-tuning minibatch."""
  fg, bg = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
  if len(fg) == 0 or len(bg) == 0:
    raise ValueError(f"fine-tuning needs foreground and background regions, got {len(fg)} and {len(bg)}")
  return np.concatenate([rng.choice(fg, positives, replace=len(fg) < positives),
                         rng.choice(bg, negatives, replace=len(bg) < negatives)])


class Pipeline:
  """The stages of the module docstring for one config and work directory."""

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.rc = config.rcnn
    self.stage_dir = os.path.join(workdir, "rcnn")
    os.makedirs(self.stage_dir, exist_ok=True)
    self._train_source = None
    self.detector = None

  @property
  def train_source(self):
    if self._train_source is None:
      self._train_source = inputs.build_source(self.config, self.config.data.train_split)
      self.detector = build_model(self.config, self._train_source.num_classes)
    return self._train_source

  def path(self, name: str) -> str:
    return os.path.join(self.stage_dir, name)

  def done(self, stage: str) -> bool:
    if stage == "finetune":
      ckpt = Checkpointer(os.path.join(self.workdir, "finetune"), async_save=False)
      step = ckpt.latest_step()
      ckpt.close()
      return step is not None and step >= self.rc.finetune_steps
    if stage == "export":
      ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), async_save=False)
      step = ckpt.latest_step()
      ckpt.close()
      return step is not None
    return os.path.exists(self.path(f"{stage}.npz"))

  def record(self, stage: str, seconds: float, **info) -> None:
    path = self.path("stages.json")
    log = json.load(open(path)) if os.path.exists(path) else {}
    log[stage] = {"seconds": seconds, **info}
    with open(path, "w") as f:
      json.dump(log, f, indent=1)

  def save(self, name: str, **arrays) -> None:
    tmp = self.path(f"{name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, self.path(f"{name}.npz"))

  def initial_variables(self):
    return jax.jit(lambda k: init_detector(self.detector, k, image_shape=(self.config.data.image_size,) * 2))(
        jax.random.PRNGKey(self.config.seed))

  def finetune(self) -> dict:
    source = self.train_source
    db = region_database(source, image_size=self.config.data.image_size, num_proposals=self.rc.train_proposals,
                         num_classes=source.num_classes, limit=self.rc.train_images or None)
    labels = finetune_labels(db, fg_threshold=self.rc.fg_threshold)
    module = self.detector.module
    variables = self.initial_variables()
    tx, schedule = make_optimizer(self.config.optim, self.rc.finetune_steps)
    state = {"step": jnp.int32(0), "params": variables["params"], "batch_stats": variables["batch_stats"],
             "opt_state": tx.init(variables["params"])}
    ckpt = Checkpointer(os.path.join(self.workdir, "finetune"), keep_last=1)
    start = ckpt.latest_step()
    if start is not None:
      state = ckpt.restore(start, state)
    step_fn = xla_cpu.jit(functools.partial(_finetune_step, module=module, tx=tx, schedule=schedule),
                          donate_argnums=0)
    writer = MetricWriter(self.workdir)
    progress = Progress(self.rc.finetune_steps, initial=int(state["step"]), desc="finetune")
    images = db["images"]
    batch = self.rc.batch_positives + self.rc.batch_negatives
    for step in range(int(state["step"]) + 1, self.rc.finetune_steps + 1):
      rng = np.random.default_rng((self.config.seed, step))  # a function of the step: resumes identically
      idx = sample_minibatch(labels, rng=rng, positives=self.rc.batch_positives, negatives=self.rc.batch_negatives)
      key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), step)
      state, metrics = step_fn(state, images[db["image"][idx]], db["boxes"][idx], labels[idx], key)
      if step % self.config.log_every == 0 or step == self.rc.finetune_steps:
        host = {k: float(v) for k, v in metrics.items()}
        if not np.isfinite(host["loss"]):
          raise FloatingPointError(f"non-finite fine-tuning loss at step {step}; newest checkpoint "
                                   f"{ckpt.latest_step()} in {self.workdir}/finetune")
        progress.update(step, images=batch, metrics=host)
        writer.write(step, host, prefix="finetune/")
      else:
        progress.update(step, images=batch)
      if step % self.rc.checkpoint_every == 0 or step == self.rc.finetune_steps:
        ckpt.save(step, state, force=True)
    ckpt.wait()
    ckpt.close()
    progress.close()
    writer.close()
    return {"regions": int(len(labels)), "foreground": int(np.sum(labels > 0)), "images": int(len(images))}

  def finetuned_variables(self):
    template = self.initial_variables()
    ckpt = Checkpointer(os.path.join(self.workdir, "finetune"), async_save=False)
    restored = ckpt.restore_subtree(ckpt.latest_step(), {"params": template["params"],
                                                          "batch_stats": template["batch_stats"]})
    ckpt.close()
    return restored

  def features(self) -> dict:
    source = self.train_source
    db = region_database(source, image_size=self.config.data.image_size, num_proposals=self.rc.feature_proposals,
                         num_classes=source.num_classes, limit=self.rc.feature_images or None)
    variables = self.finetuned_variables()
    module = self.detector.module
    chunk = self.config.model.chunk
    run = jax.jit(lambda v, im, b: module.apply(v, im, b, jnp.arange(b.shape[0], dtype=jnp.int32),
                                                method=RCNN.features))
    fc7, pool5 = [], []
    n = len(db["boxes"])
    progress = Progress(-(-n // chunk), desc="features")
    for k, s in enumerate(range(0, n, chunk)):
      idx = np.arange(s, min(s + chunk, n))
      pad = chunk - len(idx)
      idx_p = np.concatenate([idx, np.full(pad, idx[-1])])
      out = run(variables, db["images"][db["image"][idx_p]], db["boxes"][idx_p])
      fc7.append(np.asarray(out["fc7"])[:len(idx)].astype(np.float16))
      pool5.append(np.asarray(out["pool5"])[:len(idx)].astype(np.float16))
      progress.update(k + 1, images=len(idx))
    progress.close()
    arrays = {k: v for k, v in db.items() if k != "images"}
    self.save("features", fc7=np.concatenate(fc7), pool5=np.concatenate(pool5), **arrays)
    return {"regions": n, "images": int(len(db["images"]))}

  def load_features(self) -> dict[str, np.ndarray]:
    with np.load(self.path("features.npz")) as z:
      return {k: z[k] for k in z.files}

  def svm(self) -> dict:
    f = self.load_features()
    num_classes = f["class_iou"].shape[1]
    x = f["fc7"].astype(np.float32)
    scale = FEATURE_NORM / max(float(np.mean(np.linalg.norm(x, axis=1))), 1e-12)
    y = svm_labels(f, num_classes=num_classes, negative_threshold=self.rc.svm_negative_iou)
    s = self.rc.svm
    result = train_svms(x * scale, y, key=jax.random.PRNGKey(self.config.seed), l2=s.l2,
                        positive_weight=s.positive_weight, initial_negatives=s.initial_negatives,
                        max_rounds=s.max_rounds, steps=s.steps, learning_rate=s.learning_rate,
                        refit_scale=s.refit_scale)
    self.save("svm", kernel=result.kernel * scale, bias=result.bias, scale=np.float32(scale),
              added=np.array(result.added), objective=np.array(result.objective))
    return {"positives": int(np.sum(y > 0)), "negatives": int(np.sum(y < 0)), "hard_added": result.added,
            "objective": result.objective, "hard_left": result.hard_left,
            "cached_negatives": int(np.sum(result.cache & (y < 0)))}

  def bbox(self) -> dict:
    f = self.load_features()
    num_classes = f["class_iou"].shape[1]
    x = f["pool5"].astype(np.float32)
    scale = FEATURE_NORM / max(float(np.mean(np.linalg.norm(x, axis=1))), 1e-12)
    use = ~f["is_gt"]  # proposals only, as the paper
    kernel, bias, counts = fit_bbox_regressors(x[use] * scale, f["boxes"][use], f["gt_box"][use],
                                               f["gt_label"][use], f["iou"][use], num_classes=num_classes,
                                               min_iou=self.rc.bbox_min_iou, l2=self.rc.bbox_l2)
    self.save("bbox", kernel=kernel * scale, bias=bias, counts=counts)
    return {"samples_per_class": counts.tolist()}

  def export(self) -> dict:
    source = self.train_source
    variables = jax.tree.map(np.asarray, self.finetuned_variables())
    params = dict(variables["params"])
    with np.load(self.path("svm.npz")) as z:
      params["svm"] = {"kernel": z["kernel"].astype(np.float32), "bias": z["bias"].astype(np.float32)}
    with np.load(self.path("bbox.npz")) as z:
      params["bbox_reg"] = {"kernel": z["kernel"].astype(np.float32), "bias": z["bias"].astype(np.float32)}
    variables = {"params": params, "batch_stats": variables["batch_stats"]}
    del source
    split = self.config.data.eval_split
    eval_source = inputs.build_source(self.config, split)
    mesh = make_mesh()
    evaluator = evaluate_split(make_predict_fn(self.detector), replicate(variables, mesh), eval_source,
                               inputs.eval_loader(self.config, eval_source), mesh)
    step = int(self.rc.finetune_steps)
    metrics = write_evaluation(evaluator, self.workdir, split, step=step)
    print(format_summary(metrics))
    writer = MetricWriter(self.workdir)
    writer.write(step, metrics, prefix="val/")
    writer.close()
    ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), keep_last=1, async_save=False)
    ckpt.save(step, variables, metrics={"AP": metrics["AP"]}, force=True)
    ckpt.close()
    return {"AP": metrics["AP"], "AP50": metrics["AP50"]}

  def run(self) -> None:
    for stage in STAGES:
      if self.done(stage):
        print(f"stage {stage}: done, skipped")
        continue
      start = time.time()
      info = getattr(self, stage)()
      self.record(stage, time.time() - start, **info)
      print(f"stage {stage}: {time.time() - start:.0f} s {json.dumps(info)}", flush=True)


def _finetune_step(state, images, boxes, labels, key, *, module, tx, schedule):
  """One Adam step of the (C + 1)-way softmax cross-entropy on warped regions (one image per region)."""
  index = jnp.arange(boxes.shape[0], dtype=jnp.int32)

  def loss_fn(params):
    out, updates = module.apply({"params": params, "batch_stats": state["batch_stats"]}, images, boxes, index,
                                train=True, method=RCNN.features, rngs={"dropout": key}, mutable=["batch_stats"])
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels))
    accuracy = jnp.mean(jnp.argmax(out["logits"], -1) == labels)
    return loss, (accuracy, updates["batch_stats"])

  (loss, (accuracy, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  new = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
         "batch_stats": batch_stats, "opt_state": opt_state}
  return new, {"loss": loss, "accuracy": accuracy, "learning_rate": schedule(state["step"])}


def link_stages(workdir: str, from_workdir: str) -> None:
  """Links `from_workdir`'s finetune/ and rcnn/ stage outputs into `workdir` (where it has none)."""
  os.makedirs(os.path.join(workdir, "rcnn"), exist_ok=True)
  src = os.path.abspath(from_workdir)
  if not os.path.isdir(os.path.join(workdir, "finetune")):
    os.symlink(os.path.join(src, "finetune"), os.path.join(workdir, "finetune"))
  for name in ("features.npz", "svm.npz", "bbox.npz"):
    target = os.path.join(workdir, "rcnn", name)
    if not os.path.exists(target) and os.path.exists(os.path.join(src, "rcnn", name)):
      os.symlink(os.path.join(src, "rcnn", name), target)


def main(argv):
  del argv
  config, workdir = jflags.CONFIG.value, jflags.WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  machine.record(workdir)  # WORKDIR/machine.jsonl, as train.py keeps it
  if FROM_WORKDIR.value:
    link_stages(workdir, FROM_WORKDIR.value)
  Pipeline(config, workdir).run()


if __name__ == "__main__":
  app.run(main)
