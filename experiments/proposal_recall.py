"""Proposal recall of a checkpoint's first stage on a split: AR@K (COCO's average recall over IoU 0.50:0.95, class-
agnostic), recall at IoU 0.5 and 0.7, and the recall-vs-IoU curves, for detectors that output proposals
(Faster R-CNN's RPN; any detector whose outputs hold `proposals`, `proposal_scores`, `proposal_valid`).

  python experiments/proposal_recall.py --config=experiments/configs/faster_rcnn_shapes.py --workdir=DIR \\
      [--split=test] [--checkpoint=best] [--max_proposals=1000]

Writes DIR/proposals_<split>.json (the numbers) and DIR/proposal_recall_<split>.png (the curves). The RPN keeps
`--max_proposals` proposals per image after NMS (its test-time `test_post_nms_top_n` is raised to that).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import flags as jflags  # noqa: E402
from jaxdet.eval.plots import plot_recall_vs_iou  # noqa: E402
from jaxdet.eval.recall import proposal_recall  # noqa: E402
from jaxdet.models.detector import Detections, apply_detector  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.evaluate import predict_split  # noqa: E402
from jaxdet.train.loop import build_model, restore_variables  # noqa: E402
from jaxdet.train.parallel import make_mesh, replicate  # noqa: E402

SPLIT = flags.DEFINE_string("split", "test", "Split to measure recall on.")
CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "latest, best (by validation AP), or a step number.")
MAX_PROPOSALS = flags.DEFINE_integer("max_proposals", 1000, "Proposals kept per image (AR@K for K up to this).")
RECALL_AT = (100, 300, 1000)


def make_proposal_fn(detector):
  """Returns `proposals(variables, batch) -> Detections` (class 0) of the detector's first stage, jitted."""
  def proposals(variables, batch):
    out = apply_detector(detector, variables, batch, train=False)
    missing = {"proposals", "proposal_scores", "proposal_valid"} - set(out)
    if missing:
      raise ValueError(f"this detector's outputs have no {sorted(missing)}: it makes no proposals")
    return Detections(boxes=out["proposals"], scores=out["proposal_scores"],
                      classes=jnp.zeros(out["proposal_valid"].shape, jnp.int32), valid=out["proposal_valid"])

  jitted = jax.jit(proposals)
  fields = ("image", *detector.inputs)
  fn = lambda variables, batch: jitted(variables, {k: batch[k] for k in fields})  # noqa: E731
  fn.fields = fields
  return fn


def main(argv):
  del argv
  jflags.initialize()
  config, workdir = jflags.CONFIG.value, jflags.WORKDIR.value
  with config.unlocked():
    config.model.test_post_nms_top_n = MAX_PROPOSALS.value
    config.model.test_pre_nms_top_n = max(config.model.test_pre_nms_top_n, MAX_PROPOSALS.value)
  source = inputs.build_source(config, SPLIT.value)
  detector = build_model(config, source.num_classes)
  variables, step = restore_variables(config, workdir, detector, which=CHECKPOINT.value)
  mesh = make_mesh()
  results = []
  for meta, props in predict_split(make_proposal_fn(detector), replicate(variables, mesh),
                                   inputs.eval_loader(config, source), mesh):
    for b, image_id in enumerate(meta["image_id"].tolist()):
      for box, score in zip(props["boxes"][b][props["valid"][b]], props["scores"][b][props["valid"][b]]):
        x1, y1, x2, y2 = (float(v) for v in box)
        results.append({"image_id": int(image_id), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
  recall = proposal_recall(source.coco_ground_truth(), results, max_proposals=RECALL_AT)
  iou = recall["iou_thresholds"]
  summary = {"step": step, "split": SPLIT.value, "proposals_per_image": len(results) / max(len(source), 1)}
  for j, k in enumerate(RECALL_AT):
    summary[f"AR@{k}"] = recall[f"AR@{k}"]
    for t in (0.5, 0.7):
      summary[f"R{int(t * 100)}@{k}"] = float(recall["recall"][np.argmin(np.abs(iou - t)), j])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"proposals_{SPLIT.value}.json"), "w") as f:
      json.dump(summary, f, indent=1)
    plot_recall_vs_iou(recall, os.path.join(workdir, f"proposal_recall_{SPLIT.value}.png"))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))


if __name__ == "__main__":
  app.run(main)
