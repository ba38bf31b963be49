"""What a run folder records about itself, read back: metrics.jsonl records and the spans of its train.py starts."""

from __future__ import annotations

import json
import os
from typing import Any

from absl import logging

from experiments import machine


def metric_records(run_dir: str) -> list[dict[str, Any]]:
  """Returns the records of RUN_DIR/metrics.jsonl; a line cut short by a kill is skipped (and counted in the log)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  records, broken = [], 0
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        broken += line.strip() != ""
  if broken:
    logging.info("%s: skipped %d unreadable lines (a write cut short by a kill)", path, broken)
  return records


def training_spans(run_dir: str) -> list[tuple[float, float]]:
  """Returns `(start time, seconds)` of each start of train.py in `run_dir`, from its machine.jsonl line to the last
  training or validation record (`train/...`, `val/...`) before the next start; [] when either is missing. Records
  that eval.py appends later (`eval_<split>/...`) are not training time."""
  starts = [m["time"] for m in machine.read(run_dir) if "time" in m]
  times = sorted(r["time"] for r in metric_records(run_dir)
                 if "time" in r and any(k.startswith(("train/", "val/")) for k in r))
  if not starts or not times:
    return []
  spans = []
  for i, start in enumerate(starts):
    end = starts[i + 1] if i + 1 < len(starts) else float("inf")
    spans.append((start, max((t for t in times if start <= t < end), default=start) - start))
  return spans
