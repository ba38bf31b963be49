"""Compresses a Fast / Faster R-CNN checkpoint's fc6 / fc7 by truncated SVD (Fast R-CNN sec. 3.1; course B4).

  python experiments/compress_svd.py --config=experiments/configs/fast_rcnn_shapes.py --workdir=runs/fast_rcnn \\
      --out_workdir=runs/fast_rcnn_svd --ranks=64,32 [--checkpoint=best]
  python experiments/eval.py --config=experiments/configs/fast_rcnn_shapes.py --workdir=runs/fast_rcnn_svd \\
      --config.model.svd_ranks='(64,32)' --split=test --checkpoint=best

Each layer W [u, v] becomes U_t S_t [u, t] and V_t^T [t, v] (`jaxdet.models.heads.roi_box.truncate_fc_svd`);
the compressed model is scored on the validation split and saved in OUT_WORKDIR/checkpoints at the same step with
that AP, so eval.py / predict.py run it as any checkpoint (with `--config.model.svd_ranks` set to the ranks).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import flags as jflags  # noqa: E402
from jaxdet.models.heads.roi_box import truncate_fc_svd  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.checkpoint import Checkpointer  # noqa: E402
from jaxdet.train.evaluate import evaluate_split, make_predict_fn, write_evaluation  # noqa: E402
from jaxdet.train.loop import build_model, restore_variables  # noqa: E402
from jaxdet.train.parallel import make_mesh, replicate  # noqa: E402

OUT = flags.DEFINE_string("out_workdir", None, "Where the compressed checkpoint goes.")
RANKS = flags.DEFINE_list("ranks", None, "Ranks of fc6 and fc7 (0 keeps a layer whole).")
CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "latest, best (by validation AP), or a step number.")
flags.mark_flags_as_required(["out_workdir", "ranks"])


def main(argv):
  del argv
  config, workdir = jflags.CONFIG.value, jflags.WORKDIR.value
  ranks = tuple(int(r) for r in RANKS.value)
  source = inputs.build_source(config, config.data.eval_split)
  detector = build_model(config, source.num_classes)
  variables, step = restore_variables(config, workdir, detector, which=CHECKPOINT.value)
  variables = jax.tree.map(np.asarray, variables)
  params = dict(variables["params"])
  params["roi_head"] = truncate_fc_svd(params["roi_head"], ranks)
  compressed = {"params": params, "batch_stats": variables["batch_stats"]}
  with config.unlocked():
    config.model.svd_ranks = ranks
  detector = build_model(config, source.num_classes)
  mesh = make_mesh()
  evaluator = evaluate_split(make_predict_fn(detector), replicate(compressed, mesh), source,
                             inputs.eval_loader(config, source), mesh)
  os.makedirs(OUT.value, exist_ok=True)
  metrics = write_evaluation(evaluator, OUT.value, config.data.eval_split, step=step)
  with open(os.path.join(OUT.value, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  checkpointer = Checkpointer(os.path.join(OUT.value, "checkpoints"), keep_last=1, async_save=False)
  checkpointer.save(step, compressed, metrics={"AP": metrics["AP"]}, force=True)
  checkpointer.close()
  print(f"step {step}: fc6 / fc7 at ranks {ranks}, validation AP {metrics['AP']:.4f} -> {OUT.value}")


if __name__ == "__main__":
  app.run(main)
