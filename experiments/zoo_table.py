"""The zoo's results table: per-run results aggregated over seeds (mean and sample standard deviation), written
as markdown, and the README block between marker comments that the table replaces.

A run's result is a dict (what `experiments/zoo.py` reads from a run folder):
  `test`: the 12 COCO numbers of `eval_<test split>.json`; `val_AP`: validation AP of that checkpoint;
  `train_seconds`, `images_per_second`, `train_images`; `machines`: one-line descriptions; `interrupted`: bool.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def markers(block: str) -> tuple[str, str]:
  """Returns the README's begin and end marker lines of the table block named `block` (e.g. `zoo:results`)."""
  return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


BEGIN, END = markers("zoo:results")
TEST_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
SPREAD = "mean ± sample standard deviation over seeds (n − 1 in the denominator; no ± with one seed)"


def mean_and_spread(values: Sequence[float]) -> tuple[float, float | None]:
  """Returns the mean of `values` and their sample standard deviation (ddof=1), None for a single value."""
  array = np.asarray(values, np.float64)
  if array.size == 0:
    raise ValueError("no values to aggregate")
  return float(np.mean(array)), (float(np.std(array, ddof=1)) if array.size > 1 else None)


def format_cell(values: Sequence[float | None], *, digits: int) -> str:
  """Returns "mean ± spread" of `values` with `digits` decimals; "—" when any value is undefined (None, NaN, -1).

  COCO reports -1 for an area range with no ground truth; such a metric has no mean.
  """
  if not values or any(v is None or not math.isfinite(v) or v == -1 for v in values):
    return "—"
  mean, spread = mean_and_spread(values)
  return f"{mean:.{digits}f}" if spread is None else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Returns the row's numbers: per column `{"mean", "spread", "values"}` (values in seed order), seeds, machines."""
  columns = {f"test/{k}": [r["test"][k] for r in results] for k in TEST_METRICS}
  columns |= {"val/AP": [r["val_AP"] for r in results],
              "train_minutes": [r["train_seconds"] / 60 for r in results],
              "images_per_second": [r["images_per_second"] for r in results]}
  out: dict[str, Any] = {}
  for key, values in columns.items():
    defined = values and all(v is not None and math.isfinite(v) and v != -1 for v in values)
    mean, spread = mean_and_spread(values) if defined else (None, None)
    out[key] = {"mean": mean, "spread": spread, "values": values}
  out["seeds"] = [r["seed"] for r in results]
  out["train_images"] = sorted({int(r["train_images"]) for r in results})
  out["machines"] = sorted({m for r in results for m in r["machines"]})
  out["interrupted"] = sum(bool(r.get("interrupted")) for r in results)
  return out


def _images(counts: Sequence[int]) -> str:
  return " / ".join(f"{n / 1000:.1f}k" if n >= 1000 else str(n) for n in counts)


def markdown_table(rows: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], *, test_split: str = "test") -> str:
  """Returns the markdown table of `rows`, each `(name, results of its seeds)`; rows without results are left out.

  Columns: the test split's AP, AP50, AP75, APs, APm, APl, AR100; the validation AP of the same checkpoints;
  training images (steps × batch), minutes and images per second; the number of seeds (`*`: a run was interrupted
  and resumed, its minutes add up its attempts); the machine.
  """
  header = ["row", *(f"{k} ({test_split})" if k == "AP" else k for k in TEST_METRICS), "val AP", "train images",
            "train min", "img/s", "seeds", "machine"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, results in rows:
    if not results:
      continue
    numbers = aggregate(results)
    cells = [f"`{name}`"]
    cells += [format_cell(numbers[f"test/{k}"]["values"], digits=3) for k in TEST_METRICS]
    cells.append(format_cell(numbers["val/AP"]["values"], digits=3))
    cells.append(_images(numbers["train_images"]))
    cells.append(format_cell(numbers["train_minutes"]["values"], digits=1))
    cells.append(format_cell(numbers["images_per_second"]["values"], digits=1))
    cells.append(f"{len(results)}{'*' if numbers['interrupted'] else ''}")
    cells.append("; ".join(numbers["machines"]) or "—")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def results_block(table: str, *, row_configs: Sequence[tuple[str, str]], shared_overrides: Sequence[str],
                  test_split: str, commits: Sequence[str], command: str) -> str:
  """Returns the markdown that goes between the README markers: what the numbers are, the table, how to rerun it."""
  lines = [
      f"COCO box metrics on the `{test_split}` split (`jaxdet.eval`, equal to pycocotools) of the checkpoint with the "
      f"best validation AP, trained under the results protocol in [DEVELOPERS.md](DEVELOPERS.md); {SPREAD}.",
      "", table, "",
      "Rows: " + "; ".join(f"`{name}` = `{config}`" for name, config in row_configs) + "."
      + (f" Every run: `{' '.join('--config.' + o for o in shared_overrides)}`." if shared_overrides else ""),
      "train min: wall time of `experiments/train.py` (compilation, validation evaluations and checkpoints "
      "included; data-set generation not); img/s: median of the training rates it logged.",
      f"Code: {', '.join(commits) or 'unknown'}. Command: `{command}`.",
  ]
  return "\n".join(lines)


def replace_block(text: str, block: str, *, begin: str = BEGIN, end: str = END) -> str:
  """Returns `text` with what lies between the `begin` and `end` marker lines replaced by `block`.

  Raises ValueError when the markers are missing, repeated or out of order; the markers and everything outside them
  stay as they are.
  """
  if text.count(begin) != 1 or text.count(end) != 1:
    raise ValueError(f"expected one {begin} and one {end} marker, found {text.count(begin)} and {text.count(end)}")
  start, stop = text.index(begin) + len(begin), text.index(end)
  if stop < start:
    raise ValueError(f"{end} comes before {begin}")
  return text[:start] + "\n" + block.strip("\n") + "\n" + text[stop:]
