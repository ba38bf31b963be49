"""Precision/recall curves as PNG (matplotlib, headless)."""

from __future__ import annotations

import os

import numpy as np

from jaxdet.eval.coco import IOU_THRESHOLDS, RECALL_THRESHOLDS, CocoEvalResult


def plot_pr_curves(result: CocoEvalResult, path: str | os.PathLike[str], *, iou_threshold: float = 0.5,
                   area: int = 0, max_dets_index: int = -1) -> None:
  """Writes a PNG of the interpolated precision/recall curve of every category and their mean at one IoU.

  Args:
    result: an `evaluate_coco` result.
    path: output PNG path.
    iou_threshold: one of 0.50, 0.55, ..., 0.95.
    area: area-range index (0 all, 1 small, 2 medium, 3 large); max_dets_index: index into (1, 10, 100).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

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
