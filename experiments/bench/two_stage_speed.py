"""Test-time seconds per image of R-CNN, Fast R-CNN (with and without truncated SVD) and Faster R-CNN, one run.

  python experiments/bench/two_stage_speed.py --rcnn_workdir=runs/rcnn_shapes/seed0 \\
      --fast_rcnn_workdir=runs/fast_rcnn_shapes/seed0 --faster_rcnn_workdir=runs/faster_rcnn_shapes/seed0

For each detector (its shapes config, its checkpoint's weights — or freshly initialised ones where no work
directory is given, which the table says), the jitted `predict_step` runs warm on the first `--images` images of
`--split`, `--batch_size` at a time (1: the papers' per-image timing), and the wall time per image is reported
(the best of `--repeats` passes); the R-CNN family's selective search runs on the same images in this process
(fast mode, one process, the median per image) and is added. No proposal cache is needed. The "slow -> fast ->
faster" story: R-CNN runs its CNN once per proposal, Fast R-CNN once per image, Faster R-CNN also computes its
proposals on the network.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.configs import fast_rcnn_shapes, faster_rcnn_shapes, rcnn_shapes  # noqa: E402
from jaxdet.data.source import ListSource  # noqa: E402
from jaxdet.models.detector import init_detector  # noqa: E402
from jaxdet.models.heads.roi_box import truncate_fc_svd  # noqa: E402
from jaxdet.proposals.selective_search import selective_search  # noqa: E402
from jaxdet.proposals.source import ProposalSource  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.evaluate import make_predict_fn  # noqa: E402
from jaxdet.train.loop import build_model, restore_variables  # noqa: E402

RCNN_DIR = flags.DEFINE_string("rcnn_workdir", None, "R-CNN run (rcnn_shapes.py).")
FAST_DIR = flags.DEFINE_string("fast_rcnn_workdir", None, "Fast R-CNN run (fast_rcnn_shapes.py).")
FASTER_DIR = flags.DEFINE_string("faster_rcnn_workdir", None, "Faster R-CNN run (faster_rcnn_shapes.py).")
SPLIT = flags.DEFINE_string("split", "test", "Split whose first images are timed.")
IMAGES = flags.DEFINE_integer("images", 40, "Images timed per detector.")
BATCH = flags.DEFINE_integer("batch_size", 1, "Images per forward pass.")
REPEATS = flags.DEFINE_integer("repeats", 2, "Timed passes (the best is reported).")
SVD_RANKS = flags.DEFINE_list("svd_ranks", ["64", "32"], "fc6 / fc7 ranks of the SVD variant.")
PROPOSALS = flags.DEFINE_integer("num_proposals", None, "Proposals per image for R-CNN and Fast R-CNN (default: "
                                 "each config's).")
OUT = flags.DEFINE_string("out", None, "JSON file for the numbers.")
OVERRIDES = flags.DEFINE_string("overrides", "{}", "JSON dict of config.data overrides (e.g. a tiny data set).")


def _config(module, workdir):
  config = module.get_config()
  overrides = json.loads(OVERRIDES.value)
  with config.unlocked():
    for k, v in overrides.items():
      config.data[k] = v
    config.eval_batch_size = BATCH.value
    if PROPOSALS.value and "proposals" in config.data:
      config.data.proposals.num = PROPOSALS.value
    if workdir and os.path.exists(os.path.join(workdir, "config.json")):
      saved = json.load(open(os.path.join(workdir, "config.json")))
      for k, v in saved.get("model", {}).items():  # the run's architecture (width, features, ...)
        if k in config.model and k not in ("num_proposals", "svd_ranks"):
          config.model[k] = tuple(v) if isinstance(v, list) else v
  return config


def timed_source(config):
  """Returns `(source, seconds)`: the first IMAGES images of SPLIT with selective-search proposals computed here,
  one image at a time in this process, and the median seconds per image of that search."""
  base = inputs._build_source(config.data, SPLIT.value)  # pylint: disable=protected-access  (no split cache)
  examples = [base[i] for i in range(min(IMAGES.value, len(base)))]
  p = config.data.proposals
  times, boxes = [], []
  for ex in examples:
    start = time.perf_counter()
    boxes.append(selective_search(ex["image"], mode=p.mode, k_scale=p.k_scale, seed=int(ex["image_id"])))
    times.append(time.perf_counter() - start)
  arrays = {"image_id": np.array([int(ex["image_id"]) for ex in examples]),
            "counts": np.array([len(b) for b in boxes]), "boxes": np.concatenate(boxes)}
  listed = ListSource(examples, base.class_names)
  return ProposalSource(listed, arrays, num_proposals=p.num), float(np.median(times))


def time_detector(name, config, workdir, source, *, transform=None, model_overrides=None):
  """Returns seconds per image of the jitted predict step on `source`, warm, best of REPEATS."""
  with config.unlocked():
    for k, v in (model_overrides or {}).items():
      config.model[k] = v
  detector = build_model(config, source.num_classes)
  base = config.copy_and_resolve_references()
  if "svd_ranks" in base.model:
    base.model.svd_ranks = ()  # checkpoints hold the uncompressed layers; `transform` compresses them
  base_detector = build_model(base, source.num_classes)
  if workdir:
    variables, step = restore_variables(base, workdir, base_detector)
  else:
    variables, step = jax.jit(lambda k: init_detector(base_detector, k, image_shape=(config.data.image_size,) * 2))(
        jax.random.PRNGKey(0)), None
  if transform is not None:
    variables = transform(jax.tree.map(np.asarray, variables))
  predict = make_predict_fn(detector)
  batches = [{k: b[k] for k in predict.fields} for b in inputs.eval_loader(config, source)]
  jax.block_until_ready(predict(variables, batches[0]))  # compile
  best = np.inf
  for _ in range(REPEATS.value):
    start = time.perf_counter()
    for b in batches:
      jax.block_until_ready(predict(variables, b))
    best = min(best, (time.perf_counter() - start) / len(source))
  return {"detector": name, "network_s_per_image": best, "checkpoint_step": step,
          "weights": "trained" if workdir else "initialised",
          "proposals_per_image": config.data.proposals.num if "proposals" in config.data else None}


def main(argv):
  del argv
  ranks = tuple(int(r) for r in SVD_RANKS.value)
  fast_config = _config(fast_rcnn_shapes, FAST_DIR.value)
  rcnn_config = _config(rcnn_shapes, RCNN_DIR.value)
  fast_source, ss = timed_source(fast_config)
  rcnn_source, _ = timed_source(rcnn_config)
  faster_config = _config(faster_rcnn_shapes, FASTER_DIR.value)
  faster_source = ListSource([fast_source.source[i] for i in range(len(fast_source))], fast_source.class_names)
  svd = lambda v: {"params": dict(v["params"], roi_head=truncate_fc_svd(v["params"]["roi_head"], ranks)),  # noqa
                   "batch_stats": v["batch_stats"]}
  rows = [
      time_detector("R-CNN (SVM)", rcnn_config, RCNN_DIR.value, rcnn_source) | {"proposal_s": ss},
      time_detector("Fast R-CNN", fast_config, FAST_DIR.value, fast_source) | {"proposal_s": ss},
      time_detector(f"Fast R-CNN, SVD {ranks}", _config(fast_rcnn_shapes, FAST_DIR.value), FAST_DIR.value,
                    fast_source, transform=svd, model_overrides={"svd_ranks": ranks}) | {"proposal_s": ss},
      time_detector("Faster R-CNN", faster_config, FASTER_DIR.value, faster_source) | {"proposal_s": 0.0},
  ]
  print(f"{'detector':28s} {'weights':12s} {'P':>5s} {'proposals s':>12s} {'network s':>10s} {'total s':>9s}")
  for r in rows:
    r["total_s_per_image"] = r["network_s_per_image"] + r["proposal_s"]
    print(f"{r['detector']:28s} {r['weights']:12s} {str(r['proposals_per_image'] or '-'):>5s} "
          f"{r['proposal_s']:12.4f} {r['network_s_per_image']:10.4f} {r['total_s_per_image']:9.4f}")
  if OUT.value:
    with open(OUT.value, "w") as f:
      json.dump({"split": SPLIT.value, "images": IMAGES.value, "batch_size": BATCH.value, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
