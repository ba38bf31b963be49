"""Evaluation curves as PNG (matplotlib, headless): precision/recall per class and overall, recall vs IoU."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from jaxdet.eval.coco import IOU_THRESHOLDS, RECALL_THRESHOLDS, CocoEvalResult


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # no display on servers and CI
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_pr_curves(result: CocoEvalResult, path: str | os.PathLike[str], *, iou_threshold: float = 0.5,
                   area: int = 0, max_dets_index: int = -1) -> None:
  """Writes a PNG of the interpolated precision/recall curve of every category and their mean at one IoU.

  Args:
    result: an `evaluate_coco` result.
    path: output PNG path.
    iou_threshold: one of 0.50, 0.55, ..., 0.95.
    area: area-range index (0 all, 1 small, 2 medium, 3 large); max_dets_index: index into (1, 10, 100).
  """
  plt = _pyplot()
  t = int(np.argmin(np.abs(IOU_THRESHOLDS - iou_threshold)))
  precision = result.precision[t, :, :, area, max_dets_index]  # [R, K]
  fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
  defined = []
  for k, cat_id in enumerate(result.category_ids.tolist()):
    curve = precision[:, k]
    if np.all(curve < 0):
      continue
    defined.append(curve)
    ap = float(curve.mean())
    ax.plot(RECALL_THRESHOLDS, curve, lw=1.2, label=f"{result.category_names.get(cat_id, cat_id)} ({ap:.3f})")
  if defined:
    mean = np.mean(defined, axis=0)
    ax.plot(RECALL_THRESHOLDS, mean, "k--", lw=2.0, label=f"mean ({mean.mean():.3f})")
  ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
         title=f"precision / recall at IoU {IOU_THRESHOLDS[t]:.2f}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower left", ncol=2 if len(defined) > 10 else 1)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_recall_vs_iou(recall: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
  """Writes a PNG of recall against the IoU threshold, one curve per proposal budget K (AR@K in the legend).

  Args:
    recall: a `proposal_recall` result (`recall [T, len(max_proposals)]`, `iou_thresholds [T]`, `AR@K`).
    path: output PNG path.
  """
  plt = _pyplot()
  curves, thresholds = np.asarray(recall["recall"]), np.asarray(recall["iou_thresholds"])
  budgets = [int(key[3:]) for key in recall if key.startswith("AR@")]
  fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
  for j, k in enumerate(budgets):
    ax.plot(thresholds, curves[:, j], marker="o", ms=3, lw=1.5, label=f"top {k} (AR {recall[f'AR@{k}']:.3f})")
  ax.set(xlabel="IoU threshold", ylabel="recall", ylim=(0, 1.02), title="proposal recall vs IoU")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="upper right", title="proposals per image", title_fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
