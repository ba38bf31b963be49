"""Evaluate a COCO results json against a COCO-format ground truth.

  python -m jaxdet.eval --ground-truth ann.json --detections results.json [--metric coco|voc|recall]
      [--pr-curves pr.png] [--recall-curve recall.png] [--output metrics.json]

coco: the 12 pycocotools numbers and per-category AP; voc: per-class AP@0.5 and mAP (area or 11-point); recall:
class-agnostic proposal recall AR@1/10/100/1000. Bad input exits with status 1 and names the offending entry.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxdet.eval.coco import evaluate_coco, format_summary
from jaxdet.eval.plots import plot_pr_curves, plot_recall_vs_iou
from jaxdet.eval.recall import proposal_recall
from jaxdet.eval.voc import voc_evaluate


def main(argv: list[str] | None = None) -> int:
  """Returns the exit status: 0 done, 1 bad input (the message names the entry), 2 unreadable file."""
  parser = argparse.ArgumentParser(prog="python -m jaxdet.eval", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ground-truth", required=True, help="COCO-format ground-truth json")
  parser.add_argument("--detections", required=True, help="COCO results json (image_id, category_id, bbox, score)")
  parser.add_argument("--metric", choices=("coco", "voc", "recall"), default="coco")
  parser.add_argument("--use-07-metric", action="store_true", help="VOC2007 11-point AP (with --metric voc)")
  parser.add_argument("--pr-curves", help="write precision/recall curves at IoU 0.5 to this PNG (coco)")
  parser.add_argument("--recall-curve", help="write recall vs IoU per proposal budget to this PNG (recall)")
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
    elif args.metric == "recall":
      recall = proposal_recall(ground_truth, detections)
      metrics = {key: value for key, value in recall.items() if key.startswith("AR@")}
      for key, value in metrics.items():
        print(f"  {key:<8} {value:0.4f}  (class-agnostic, IoU 0.50:0.95)")
      if args.recall_curve:
        plot_recall_vs_iou(recall, args.recall_curve)
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
