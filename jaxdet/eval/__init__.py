"""Evaluation: COCO mAP/AR equal to pycocotools, VOC AP, proposal recall, the batch evaluator, PR-curve plots.

`python -m jaxdet.eval --ground-truth ann.json --detections results.json [--metric coco|voc|recall]` from a shell.
"""

from jaxdet.eval.coco import (STAT_KEYS, CocoEvalResult, ap_at_iou, coco_evaluate, evaluate_coco, format_summary)
from jaxdet.eval.evaluator import CocoEvaluator
from jaxdet.eval.inputs import parse_detections, parse_ground_truth, parse_proposals
from jaxdet.eval.plots import plot_pr_curves, plot_recall_vs_iou
from jaxdet.eval.recall import proposal_recall
from jaxdet.eval.voc import voc_ap, voc_evaluate
