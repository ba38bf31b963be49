"""Evaluates the localisation-confidence checkpoints under each inference variant and writes the ablation table.

Each variant is (a trained run, inference switches): the Faster R-CNN + FPN baseline; IoU-Net's checkpoint with
standard NMS, IoU-guided NMS and refinement; KL-Loss's checkpoint with NMS, variance voting and Soft-NMS. Every
checkpoint is `RUNS/<config name>/seed<k>` (the results protocol's layout, selected by validation AP with
`--checkpoint=best`), evaluated on `--split` with the same evaluator as `eval.py`. Reported: AP, AP50, AP75 and AP90
(AP at IoU 0.9, read from the COCO precision array: `precision[t = 0.9, :, :, area all, 100 dets]` averaged over
the defined entries, as pycocotools' summary reads AP75 at t = 0.75), APs/m/l; per seed, and the mean +- half the
range over the seeds. Writes `--out` (JSON, every number) and prints the markdown table.

  python experiments/ablate_localization.py --runs=runs --seeds=0,1 --split=test \
      --out=runs/localization_ablation.json [--variants=iounet_nms,iounet_guided] [--override=key=value ...]

Parts evaluated separately (e.g. each config's variants as soon as its runs finish) join into one table, nothing
re-evaluated: `--merge=runs/iounet.json,runs/kl.json --out=runs/localization_ablation.json`.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from jaxdet.eval.coco import ap_at_iou  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.evaluate import evaluate_split, make_predict_fn  # noqa: E402
from jaxdet.train.loop import build_model, restore_variables  # noqa: E402
from jaxdet.train.parallel import make_mesh, replicate  # noqa: E402

# name -> (row label, config module, model overrides)
VARIANTS = {
    "baseline": ("Faster R-CNN + FPN", "faster_rcnn_fpn_shapes", {}),
    "iounet_nms": ("IoU-Net: IoU branch trained, standard NMS", "faster_rcnn_iounet_shapes",
                   {"iou_nms": False, "refine": False}),
    "iounet_guided": ("+ IoU-guided NMS", "faster_rcnn_iounet_shapes", {"iou_nms": True, "refine": False}),
    "iounet_guided_refine": ("+ IoU-guided NMS + refinement", "faster_rcnn_iounet_shapes",
                             {"iou_nms": True, "refine": True}),
    "iounet_nms_refine": ("IoU-Net: standard NMS + refinement", "faster_rcnn_iounet_shapes",
                          {"iou_nms": False, "refine": True}),
    "kl_nms": ("KL loss, standard NMS", "faster_rcnn_kl_shapes", {"variance_voting": False, "soft_nms": False}),
    "kl_voting": ("+ variance voting", "faster_rcnn_kl_shapes", {"variance_voting": True, "soft_nms": False}),
    "kl_soft": ("KL loss, Soft-NMS", "faster_rcnn_kl_shapes", {"variance_voting": False, "soft_nms": True}),
    "kl_soft_voting": ("+ Soft-NMS + variance voting", "faster_rcnn_kl_shapes",
                       {"variance_voting": True, "soft_nms": True}),
}
COLUMNS = ("AP", "AP50", "AP75", "AP90", "APs", "APm", "APl")

RUNS = flags.DEFINE_string("runs", "runs", "Folder of the runs: RUNS/<config name>/seed<k>.")
SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds (run folders seed<k>).")
SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "latest, best (by validation AP), or a step number.")
ONLY = flags.DEFINE_list("variants", list(VARIANTS), f"Variants to evaluate, of {list(VARIANTS)}.")
OVERRIDES = flags.DEFINE_multi_string("override", [], "key=value applied to every config (e.g. "
                                      "data.shapes_config=tiny), or CONFIG:key=value to one config (e.g. "
                                      "faster_rcnn_iounet_shapes:model.iou_samples=16); the value read as a Python "
                                      "literal when it is one.")
MERGE = flags.DEFINE_list("merge", [], "Instead of evaluating: JSON files written by --out to join into one table "
                          "(rows in the variants' order, seeds of one variant from several files combined; they must "
                          "agree on split and checkpoint).")
OUT = flags.DEFINE_string("out", None, "JSON file for every number.")
MARKDOWN = flags.DEFINE_string("markdown", None, "Optional file for the markdown table.")


def set_path(config: Any, key: str, value: Any) -> None:
  """Sets the dotted `key` of an ml_collections config (the value parsed as a Python literal when possible)."""
  if isinstance(value, str):
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
  *parents, last = key.split(".")
  node = config
  for name in parents:
    node = node[name]
  if last not in node:
    raise KeyError(f"--override {key}: the config has no such key")
  node[last] = value


def make_config(module: str, model: dict[str, Any], seed: int) -> Any:
  config = importlib.import_module(f"experiments.configs.{module}").get_config()
  config.seed = seed
  for override in OVERRIDES.value:
    key, _, value = override.partition("=")
    target, _, key = key.rpartition(":")
    if target in ("", module):
      set_path(config, key, value)
  for key, value in model.items():
    set_path(config, f"model.{key}", value)
  return config


def evaluate(config: Any, variables: Any, mesh) -> dict[str, float]:
  source = inputs.build_source(config, SPLIT.value)
  detector = build_model(config, source.num_classes)
  evaluator = evaluate_split(make_predict_fn(detector), replicate(variables, mesh), source,
                             inputs.eval_loader(config, source), mesh, show_progress=False)
  result = evaluator.evaluate_full()
  return {**{k: result.stats[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
          "AP90": ap_at_iou(result, 0.9), "skipped": evaluator.num_skipped}


def table(rows: list[dict[str, Any]]) -> str:
  lines = ["| variant | run | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
  for row in rows:
    cells = []
    for column in COLUMNS:
      values = np.array([m[column] for m in row["seeds"].values()])
      half_range = (values.max() - values.min()) / 2
      cells.append(f"{values.mean():.3f} ± {half_range:.3f}" if len(values) > 1 else f"{values.mean():.3f}")
    lines.append(f"| {row['label']} | {row['config']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def merge(paths: list[str]) -> dict[str, Any]:
  """Returns the `--out` JSON of several `--out` files joined: rows in VARIANTS order, each variant's seeds combined
  (a seed evaluated in two files keeps the later file's numbers)."""
  parts = [json.load(open(path)) for path in paths]
  for key in ("split", "checkpoint"):
    values = {part[key] for part in parts}
    if len(values) > 1:
      raise ValueError(f"--merge: the files disagree on {key}: {sorted(values)} ({paths})")
  rows: dict[str, dict[str, Any]] = {}
  for part in parts:
    for row in part["rows"]:
      if row["variant"] in rows:
        rows[row["variant"]]["seeds"] |= row["seeds"]
      else:
        rows[row["variant"]] = row
  order = list(VARIANTS)
  ranked = sorted(rows.values(), key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order))
  for row in ranked:
    row["seeds"] = dict(sorted(row["seeds"].items(), key=lambda item: int(item[0])))
  return {"split": parts[0]["split"], "checkpoint": parts[0]["checkpoint"], "rows": ranked}


def write(result: dict[str, Any]) -> None:
  markdown = table(result["rows"])
  print(markdown)
  if OUT.value:
    with open(OUT.value, "w") as f:
      json.dump(result, f, indent=1)
  if MARKDOWN.value:
    with open(MARKDOWN.value, "w") as f:
      f.write(markdown + "\n")


def main(argv):
  del argv
  if MERGE.value:
    write(merge(MERGE.value))
    return
  unknown = [v for v in ONLY.value if v not in VARIANTS]
  if unknown:
    raise ValueError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
  mesh = make_mesh()
  restored: dict[tuple[str, int], tuple[Any, int]] = {}
  rows = []
  for name in ONLY.value:
    label, module, model = VARIANTS[name]
    row = {"variant": name, "label": label, "config": module, "model": model, "seeds": {}}
    for seed in map(int, SEEDS.value):
      config = make_config(module, model, seed)
      workdir = os.path.join(RUNS.value, module, f"seed{seed}")
      if (module, seed) not in restored:  # the switches change inference only: one restore serves every variant
        detector = build_model(config, inputs.build_source(config, SPLIT.value).num_classes)
        restored[module, seed] = restore_variables(config, workdir, detector, which=CHECKPOINT.value)
      variables, step = restored[module, seed]
      metrics = evaluate(config, variables, mesh)
      row["seeds"][str(seed)] = metrics | {"step": step, "workdir": workdir}
      print(f"{name} seed {seed} (step {step}): " + ", ".join(f"{k} {metrics[k]:.3f}" for k in COLUMNS), flush=True)
    rows.append(row)
  write({"split": SPLIT.value, "checkpoint": CHECKPOINT.value, "rows": rows})


if __name__ == "__main__":
  app.run(main)
