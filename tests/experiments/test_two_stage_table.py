"""experiments/two_stage_table.py on hand-made run folders: which numbers each row reads and how it times them."""

import json
import os

import pytest

from experiments import two_stage_table
from experiments.zoo_table import replace_block

MACHINE = {"cpu": "AMD EPYC", "cores": 2, "backend": "cpu", "jax": "0.10.2"}


def write(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(value if isinstance(value, str) else json.dumps(value))


def evaluation(ap, step):
  return {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.1, "AR100": ap + 0.1, "step": step}


def rcnn_run(run_dir, *, ap, val_ap, stages, linked_to=None, scorer="svm"):
  rcnn = {"finetune_steps": 100, "batch_positives": 32, "batch_negatives": 96}
  write(f"{run_dir}/config.json", {"model": {"name": "rcnn", "scorer": scorer}, "rcnn": rcnn})
  write(f"{run_dir}/eval_test.json", evaluation(ap, 100))
  write(f"{run_dir}/eval_validation.json", evaluation(val_ap, 100))
  write(f"{run_dir}/rcnn/stages.json", {k: {"seconds": s} for k, s in stages.items()})
  write(f"{run_dir}/machine.jsonl", json.dumps({"time": 0.0, **MACHINE}) + "\n")
  if linked_to:
    os.symlink(os.path.join(linked_to, "finetune"), os.path.join(run_dir, "finetune"))
  else:
    os.makedirs(f"{run_dir}/finetune")


def train_run(run_dir, *, name, ap, best_step, start, seconds):
  write(f"{run_dir}/config.json", {"model": {"name": name}, "total_steps": 200, "batch_size": 2})
  write(f"{run_dir}/eval_test.json", evaluation(ap, best_step))
  write(f"{run_dir}/machine.jsonl", json.dumps({"time": start, **MACHINE}) + "\n")
  lines = [{"step": s, "time": start + seconds * s / 200, "train/loss": 1.0} for s in (100, 200)]
  lines += [{"step": 100, "time": start + 1, "val/AP": ap - 0.05}, {"step": 200, "time": start + 2, "val/AP": ap - 0.5}]
  lines.append({"step": 100, "time": start + 1e5, "eval_test/AP": ap})  # eval.py, a day later: not training time
  write(f"{run_dir}/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 20')  # a cut line


@pytest.fixture
def runs(tmp_path):
  for seed, shift in ((0, 0.0), (1, 0.02)):
    rcnn = str(tmp_path / "rcnn_shapes" / f"seed{seed}")
    rcnn_run(rcnn, ap=0.2 + shift, val_ap=0.19, stages={"finetune": 600, "features": 120, "svm": 60, "bbox": 6,
                                                          "export": 54})
    rcnn_run(str(tmp_path / "rcnn_softmax_shapes" / f"seed{seed}"), ap=0.1 + shift, val_ap=0.09,
             stages={"export": 60}, linked_to=rcnn, scorer="softmax")
    fast = str(tmp_path / "fast_rcnn_shapes" / f"seed{seed}")
    train_run(fast, name="fast_rcnn", ap=0.4 + shift, best_step=100, start=1000.0, seconds=1200 + 60 * seed)
    svd = str(tmp_path / "fast_rcnn_svd_shapes" / f"seed{seed}")
    write(f"{svd}/config.json", {"model": {"name": "fast_rcnn"}, "total_steps": 200, "batch_size": 2})
    write(f"{svd}/eval_test.json", evaluation(0.39 + shift, 100))
    write(f"{svd}/eval_validation.json", evaluation(0.3, 100))
  return tmp_path


def cells(text, name):
  line = next(l for l in text.splitlines() if l.startswith(f"| {name} |"))
  return [c.strip() for c in line.strip("|").split("|")]


def test_rows_read_each_pipelines_records(runs):
  speed = {"split": "test", "images": 8, "rows": [{"detector": "R-CNN (SVM)", "total_s_per_image": 0.25},
                                                  {"detector": "Fast R-CNN", "total_s_per_image": 0.0625}]}
  write(str(runs / "speed.json"), speed)
  text = two_stage_table.block(str(runs), str(runs / "speed.json"))
  # R-CNN: its stages add up (840 s = 14 min); regions, not images; the time of the speed run.
  assert cells(text, "R-CNN, SVMs") == ["R-CNN, SVMs", "0.210 ± 0.014", "0.410 ± 0.014", "0.110 ± 0.014",
                                        "0.310 ± 0.014", "0.190 ± 0.000", "0.01 M regions", "14.0 ± 0.0", "0.250",
                                        "2", "AMD EPYC, 2 cores, CPU, jax 0.10.2"]
  # The softmax variant: the stages it shares with the SVM run but not the SVMs (600 + 120 + 6 + its own 60 s).
  assert cells(text, "R-CNN, softmax")[7] == "13.1 ± 0.0"
  # Fast R-CNN: train.py's span (to the last timed record), the validation AP of the tested (best) step.
  fast = cells(text, "Fast R-CNN")
  assert fast[1] == "0.410 ± 0.014" and fast[5] == "0.360 ± 0.014" and fast[6] == "0.4k images"
  assert fast[7] == "20.5 ± 0.7" and fast[8] == "0.062"
  # The SVD rows are Fast R-CNN's checkpoints: its training time and machine; no speed row given: "—".
  svd = cells(text, "Fast R-CNN, SVD")
  assert svd[1] == "0.400 ± 0.014" and svd[7] == "20.5 ± 0.7" and svd[8] == "—" and svd[10].startswith("AMD")
  assert "| Faster R-CNN |" not in text  # no runs, no row
  assert "--speed=" in text and "8 `test` images" in text


def test_a_run_without_its_validation_number_is_an_error(runs):
  os.remove(runs / "fast_rcnn_svd_shapes" / "seed1" / "eval_validation.json")
  with pytest.raises(ValueError, match="fast_rcnn_svd_shapes/seed1: no validation AP"):
    two_stage_table.block(str(runs), None)


def test_the_block_replaces_the_readme_markers(runs):
  text = two_stage_table.block(str(runs), None)
  readme = f"a\n{two_stage_table.BEGIN}\nold\n{two_stage_table.END}\nb\n"
  new = replace_block(readme, text, begin=two_stage_table.BEGIN, end=two_stage_table.END)
  assert "old" not in new and "| R-CNN, SVMs |" in new and new.startswith("a\n") and new.endswith("b\n")
