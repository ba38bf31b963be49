"""Evaluate a COCO results json against a COCO-format ground truth.

  python -m jaxdet.eval --ground-truth ann.json --detections results.json [--metric coco|voc] [--pr-curves pr.png]
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxdet.eval.coco import evaluate_coco, format_summary
from jaxdet.eval.plots import plot_pr_curves
from jaxdet.eval.voc import voc_evaluate


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxdet.eval", description=__doc__.split("\n")[1])
  parser.add_argument("--ground-truth", required=True, help="COCO-format ground-truth json")
  parser.add_argument("--detections", required=True, help="COCO results json (image_id, category_id, bbox, score)")
  parser.add_argument("--metric", choices=("coco", "voc"), default="coco")
  parser.add_argument("--use-07-metric", action="store_true", help="VOC2007 11-point AP (with --metric voc)")
  parser.add_argument("--pr-curves", help="write precision/recall curves at IoU 0.5 to this PNG (coco)")
  parser.add_argument("--output", help="write the metrics to this json")
  args = parser.parse_args(argv)
  try:
    with open(args.ground_truth) as f:
      ground_truth = json.load(f)
    with open(args.detections) as f:
      detections = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    if args.metric == "coco":
      result = evaluate_coco(ground_truth, detections)
      print(format_summary(result.stats))
      metrics = dict(result.stats)
      metrics.update({f"AP/{result.category_names[c]}": ap for c, ap in result.per_category_ap.items()})
      if args.pr_curves:
        plot_pr_curves(result, args.pr_curves)
    else:
      voc = voc_evaluate(ground_truth, detections, use_07_metric=args.use_07_metric)
      names = {int(c["id"]): c.get("name", str(c["id"])) for c in ground_truth["categories"]}
      for cat_id, ap in voc["AP"].items():
        print(f"  {names[cat_id]:<20} AP50 {ap:0.4f}")
      print(f"mAP@0.5 ({'11-point' if args.use_07_metric else 'area'}): {voc['mAP']:0.4f}")
      metrics = {"mAP": voc["mAP"], **{f"AP/{names[c]}": ap for c, ap in voc["AP"].items()}}
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.output:
    with open(args.output, "w") as f:
      json.dump(metrics, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
