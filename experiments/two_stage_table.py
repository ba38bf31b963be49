"""The "slow -> fast -> faster" table: R-CNN (SVMs, softmax), Fast R-CNN (with and without SVD), Faster R-CNN.

  python experiments/two_stage_table.py --workdir=runs [--speed=runs/bench/two_stage_speed.json] [--write_readme]

Reads the finished runs in WORKDIR (per seed k):
  rcnn_shapes/seed<k>           experiments/rcnn.py with rcnn_shapes.py (WORKDIR/.../rcnn/stages.json: stage times)
  rcnn_softmax_shapes/seed<k>   rcnn.py with rcnn_softmax_shapes.py --from_workdir=rcnn_shapes/seed<k>
  fast_rcnn_shapes/seed<k>      experiments/train.py with fast_rcnn_shapes.py
  fast_rcnn_svd_shapes/seed<k>  experiments/compress_svd.py of fast_rcnn_shapes/seed<k>
  faster_rcnn_shapes/seed<k>    experiments/train.py with faster_rcnn_shapes.py
each with `eval_test.json` (eval.py --split=test --checkpoint=best) and the validation AP of that checkpoint. The
training minutes of a train.py run span its machine.jsonl start to its last metrics record (as the zoo adopts a run);
R-CNN's are the sum of its stages (the softmax variant: the stages it shares with the SVM run, which it does not
retrain, plus its own export); the SVD rows are Fast R-CNN's checkpoints compressed after training. `--speed` adds the
test-time seconds per image of experiments/bench/two_stage_speed.py (--out). The table is printed, written to
WORKDIR/two_stage.md, and with --write_readme put between `<!-- two_stage:begin -->` and `<!-- two_stage:end -->`.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from experiments import machine, run_records, zoo_table  # noqa: E402

BEGIN, END = "<!-- two_stage:begin -->", "<!-- two_stage:end -->"
# (table name, run folder, detector name in two_stage_speed.py's json, what it is, folder of the run whose training
# it is when not its own)
ROWS = (
    ("R-CNN, SVMs", "rcnn_shapes", "R-CNN (SVM)", "warped regions -> CNN -> per-class linear SVMs", None),
    ("R-CNN, softmax", "rcnn_softmax_shapes", "R-CNN (SVM)", "the same CNN scored by its fine-tuned softmax", None),
    ("Fast R-CNN", "fast_rcnn_shapes", "Fast R-CNN", "one pass per image, RoI Pool over selective search", None),
    ("Fast R-CNN, SVD", "fast_rcnn_svd_shapes", "Fast R-CNN, SVD (64, 32)", "fc6 / fc7 truncated to ranks 64 / 32",
     "fast_rcnn_shapes"),  # compressed from Fast R-CNN's run of the same seed
    ("Faster R-CNN", "faster_rcnn_shapes", "Faster R-CNN", "the RPN replaces selective search", None),
)
METRICS = ("AP", "AP50", "AP75", "AR100")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def validation_ap(run_dir: str, step: int) -> float:
  """Returns the validation AP recorded for `step` (metrics.jsonl, else eval_validation.json of that step)."""
  val = [r["val/AP"] for r in run_records.metric_records(run_dir)
         if r.get("step") == step and r.get("val/AP") is not None]
  if val:
    return val[-1]
  path = os.path.join(run_dir, "eval_validation.json")
  if os.path.exists(path) and read_json(path).get("step") == step:
    return read_json(path)["AP"]
  raise ValueError(f"{run_dir}: no validation AP recorded for step {step}, the checkpoint evaluated on test")


def train_py_seconds(run_dir: str) -> float:
  """Returns the wall time of train.py in `run_dir`, all its starts together (as the zoo adopts a run)."""
  spans = run_records.training_spans(run_dir)
  if not spans:
    raise ValueError(f"{run_dir}: no machine.jsonl start or timed metrics record to measure its training")
  return sum(seconds for _, seconds in spans)


def rcnn_seconds(run_dir: str) -> float:
  """Returns the sum of R-CNN's stage times; a variant linked to another run's stages adds the shared ones."""
  own = read_json(os.path.join(run_dir, "rcnn", "stages.json"))
  finetune = os.path.join(run_dir, "finetune")
  if not os.path.islink(finetune):
    return sum(s["seconds"] for s in own.values())
  source = read_json(os.path.join(os.path.dirname(os.path.realpath(finetune)), "rcnn", "stages.json"))
  shared = {k: v for k, v in source.items() if k not in own and k != "svm"}  # the softmax needs no SVMs
  return sum(s["seconds"] for s in (own | shared).values())


def trained_on(config: dict[str, Any]) -> str:
  """Returns what a run trained on: images (steps x batch) or, for R-CNN, warped regions."""
  if config["model"]["name"] == "rcnn":  # rcnn.py's fine-tuning: steps x (positives + background) warped regions
    rc = config["rcnn"]
    regions = rc["finetune_steps"] * (rc["batch_positives"] + rc["batch_negatives"])
    return f"{regions / 1e6:.2f} M regions"
  return f"{config['total_steps'] * config['batch_size'] / 1000:.1f}k images"


def seed_result(run_dir: str, trained_dir: str) -> dict[str, Any]:
  """Returns one seed's numbers: `test` (eval_test.json), `val_AP`, `train_seconds`, `trained_on`, `machines`;
  `trained_dir` is the run whose training it is (`run_dir` itself, or the run a compressed checkpoint came from)."""
  test = read_json(os.path.join(run_dir, "eval_test.json"))
  config = read_json(os.path.join(run_dir, "config.json"))
  seconds = rcnn_seconds(run_dir) if config["model"]["name"] == "rcnn" else train_py_seconds(trained_dir)
  machines = machine.read(run_dir) or machine.read(trained_dir)
  return {"test": test, "val_AP": validation_ap(run_dir, test["step"]), "train_seconds": seconds,
          "trained_on": trained_on(config), "machines": sorted({machine.summary(m) for m in machines})}


def table(workdir: str, speed: dict[str, Any] | None) -> str:
  """Returns the markdown table of the ROWS that have finished runs in `workdir` (`speed`: two_stage_speed's json)."""
  seconds = {r["detector"]: r["total_s_per_image"] for r in (speed or {}).get("rows", [])}
  header = ["detector", "AP (test)", "AP50", "AP75", "AR100", "val AP", "trained on", "train min",
            "test s / image", "seeds", "machine"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, folder, speed_name, _, trained_in in ROWS:
    runs = sorted(d for d in glob.glob(os.path.join(workdir, folder, "seed*"))
                  if os.path.exists(os.path.join(d, "eval_test.json")))
    if not runs:
      continue
    results = [seed_result(d, os.path.join(workdir, trained_in or folder, os.path.basename(d))) for d in runs]
    cells = [name, *(zoo_table.format_cell([r["test"][k] for r in results], digits=3) for k in METRICS),
             zoo_table.format_cell([r["val_AP"] for r in results], digits=3),
             " / ".join(sorted({r["trained_on"] for r in results})),
             zoo_table.format_cell([r["train_seconds"] / 60 for r in results], digits=1),
             f"{seconds[speed_name]:.3f}" if speed_name in seconds else "—", str(len(results)),
             "; ".join(sorted({m for r in results for m in r["machines"]})) or "—"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def block(workdir: str, speed_path: str | None) -> str:
  """Returns what goes between the README markers: what the numbers are, the table, and the command."""
  speed = read_json(speed_path) if speed_path else None
  notes = [f"COCO box metrics on `test` of each run's best-validation checkpoint; {zoo_table.SPREAD}.",
           "", table(workdir, speed), "",
           "Rows: " + "; ".join(f"{name}: `{folder}` ({what})" for name, folder, _, what, _ in ROWS) + "."]
  if speed:
    notes.append(f"test s / image: `experiments/bench/two_stage_speed.py`, {speed['images']} `{speed['split']}` "
                 f"images one at a time, selective search (fast mode) included for the R-CNN family; one run.")
  notes.append(f"Command: `python experiments/two_stage_table.py --workdir={workdir}"
               f"{f' --speed={speed_path}' if speed_path else ''} --write_readme`.")
  return "\n".join(notes)


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir
  text = block(workdir, flags.FLAGS.speed)
  print(text)
  with open(os.path.join(workdir, "two_stage.md"), "w") as f:
    f.write(text + "\n")
  if flags.FLAGS.write_readme:
    with open(flags.FLAGS.readme) as f:
      readme = f.read()
    with open(flags.FLAGS.readme, "w") as f:
      f.write(zoo_table.replace_block(readme, text, begin=BEGIN, end=END))


if __name__ == "__main__":  # flags only here: tests import this module beside scripts that define --workdir
  flags.DEFINE_string("workdir", "runs", "Folder holding the runs (see the module docstring).")
  flags.DEFINE_string("speed", None, "JSON written by experiments/bench/two_stage_speed.py --out.")
  flags.DEFINE_bool("write_readme", False, "Also put the table between the README's markers.")
  flags.DEFINE_string("readme", "README.md", "The README --write_readme edits.")
  app.run(main)
