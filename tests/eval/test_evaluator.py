"""CocoEvaluator (padded batches -> COCO results -> metrics), the PR-curve and recall PNGs, and the CLI."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdet.eval import (STAT_KEYS, CocoEvaluator, coco_evaluate, evaluate_coco, format_summary, plot_pr_curves,
                         plot_recall_vs_iou, proposal_recall)
from jaxdet.eval.__main__ import main as cli_main
from tests.eval.conftest import make_coco_set, pycocotools_eval


def _padded_batches(gt, dets, category_ids, batch_size=4, max_dets=160):
  """Turns a COCO results list into padded per-image arrays, as a detector's postprocess would emit."""
  cat_index = {c: k for k, c in enumerate(category_ids)}
  image_ids = [im["id"] for im in gt["images"]]
  for start in range(0, len(image_ids), batch_size):
    ids = image_ids[start:start + batch_size]
    boxes = np.zeros((len(ids), max_dets, 4), np.float32)
    scores = np.zeros((len(ids), max_dets), np.float32)
    classes = np.zeros((len(ids), max_dets), np.int32)
    valid = np.zeros((len(ids), max_dets), bool)
    for b, image_id in enumerate(ids):
      mine = [d for d in dets if d["image_id"] == image_id][:max_dets]
      for k, d in enumerate(mine):
        x, y, w, h = d["bbox"]
        boxes[b, k] = [x, y, x + w, y + h]
        scores[b, k], classes[b, k], valid[b, k] = d["score"], cat_index[d["category_id"]], True
    yield np.array(ids), jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes), jnp.asarray(valid)


def test_accumulated_batches_evaluate_like_the_results_list(tmp_path):
  gt, dets = make_coco_set(3, num_images=24, max_dets=30)
  category_ids = [c["id"] for c in gt["categories"]]
  evaluator = CocoEvaluator(gt, category_ids)
  for batch in _padded_batches(gt, dets, category_ids):
    evaluator.add(*batch)
  results = evaluator.results()
  assert len(results) == sum(1 for d in dets if d["image_id"] in {im["id"] for im in gt["images"]})
  metrics = evaluator.evaluate()
  # The written json is what pycocotools reads, and it gives the evaluator's 12 numbers.
  path = tmp_path / "results.json"
  evaluator.write_results(path)
  ref = pycocotools_eval(gt, json.loads(path.read_text()))
  np.testing.assert_allclose([metrics[k] for k in STAT_KEYS], ref.stats, atol=1e-6, rtol=0)
  np.testing.assert_allclose(metrics["AP"], coco_evaluate(gt, dets)["AP"], atol=2e-3)
  assert "AP/c1" in metrics
  assert "Average Precision" in evaluator.summary()
  evaluator.reset()
  assert evaluator.results() == []


def test_degenerate_detections_are_skipped_and_counted():
  gt, _ = make_coco_set(0, num_images=3)
  evaluator = CocoEvaluator(gt, [c["id"] for c in gt["categories"]])
  image_ids = np.array([im["id"] for im in gt["images"]])
  boxes = np.array([[[0, 0, 10, 10], [5, 5, 5, 9], [0, 0, np.nan, 3], [0, 0, 4, 4]]] * 3, np.float32)
  valid = np.array([[True, True, True, False]] * 3)
  evaluator.add(image_ids, boxes, np.full((3, 4), 0.5), np.zeros((3, 4), np.int32), valid)
  assert len(evaluator.results()) == 3
  assert evaluator.num_skipped == 6
  assert "skipped 6 detections" in evaluator.summary()
  # 0.0004 px wide: positive, but 0 once rounded to the json's 3 decimals, so skipped rather than written empty.
  evaluator.add(image_ids[:1], np.array([[[5.0, 5.0, 5.0004, 9.0]]]), np.ones((1, 1)), np.zeros((1, 1), np.int32),
                np.ones((1, 1), bool))
  assert evaluator.num_skipped == 7 and len(evaluator.results()) == 3
  assert np.isfinite(evaluator.evaluate()["AP"])


def test_unknown_images_and_classes_are_rejected():
  gt, _ = make_coco_set(0, num_images=3)
  evaluator = CocoEvaluator(gt, [c["id"] for c in gt["categories"]])
  boxes = np.array([[[0, 0, 10, 10]]], np.float32)
  with pytest.raises(ValueError, match="not in the ground truth"):
    evaluator.add(np.array([-1]), boxes, np.ones((1, 1)), np.zeros((1, 1), np.int32), np.ones((1, 1), bool))
  with pytest.raises(ValueError, match="class indices"):
    evaluator.add(np.array([gt["images"][0]["id"]]), boxes, np.ones((1, 1)), np.full((1, 1), 9), np.ones((1, 1), bool))


def test_pr_curve_png(tmp_path):
  gt, dets = make_coco_set(1, num_images=20)
  path = tmp_path / "pr.png"
  plot_pr_curves(evaluate_coco(gt, dets), path)
  image = Image.open(path)
  assert image.size[0] > 300 and image.size[1] > 200
  assert len(np.unique(np.asarray(image.convert("L")))) > 10  # curves were drawn, not an empty canvas


def test_cli_coco_and_voc(tmp_path, capsys):
  gt, dets = make_coco_set(2, num_images=15, difficult_rate=0.1)
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "dt.json").write_text(json.dumps(dets))
  args = ["--ground-truth", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "dt.json")]
  assert cli_main(args + ["--pr-curves", str(tmp_path / "pr.png"), "--output", str(tmp_path / "m.json")]) == 0
  out = capsys.readouterr().out
  assert out.count("Average Precision") == 6
  assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(coco_evaluate(gt, dets)["AP"])
  assert (tmp_path / "pr.png").stat().st_size > 1000
  assert cli_main(args + ["--metric", "voc", "--use-07-metric"]) == 0
  assert "mAP@0.5 (11-point)" in capsys.readouterr().out


def test_cli_reports_bad_detections(tmp_path, capsys):
  gt, dets = make_coco_set(2, num_images=5)
  dets[0]["category_id"] = 4242
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "dt.json").write_text(json.dumps(dets))
  code = cli_main(["--ground-truth", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "dt.json")])
  assert code == 1
  assert "detection #0" in capsys.readouterr().err


def test_recall_curve_png_and_cli(tmp_path, capsys):
  gt, dets = make_coco_set(4, num_images=12)
  recall = proposal_recall(gt, dets)
  plot_recall_vs_iou(recall, tmp_path / "recall.png")
  image = Image.open(tmp_path / "recall.png")
  assert len(np.unique(np.asarray(image.convert("L")))) > 10
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "dt.json").write_text(json.dumps(dets))
  args = ["--ground-truth", str(tmp_path / "gt.json"), "--detections", str(tmp_path / "dt.json"), "--metric",
          "recall", "--recall-curve", str(tmp_path / "cli.png"), "--output", str(tmp_path / "m.json")]
  assert cli_main(args) == 0
  assert "AR@1000" in capsys.readouterr().out
  assert json.loads((tmp_path / "m.json").read_text())["AR@100"] == pytest.approx(recall["AR@100"])
  assert (tmp_path / "cli.png").stat().st_size > 1000


def test_cli_as_a_module_in_a_fresh_process(tmp_path):
  """`python -m jaxdet.eval` itself: the entry point, stdout layout and exit codes."""
  gt, dets = make_coco_set(5, num_images=8)
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "dt.json").write_text(json.dumps(dets))
  base = [sys.executable, "-m", "jaxdet.eval", "--ground-truth", str(tmp_path / "gt.json")]
  root = pathlib.Path(__file__).resolve().parents[2]
  run = subprocess.run(base + ["--detections", str(tmp_path / "dt.json")], capture_output=True, text=True,
                       cwd=root, check=False)
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines()[0] == format_summary(coco_evaluate(gt, dets)).splitlines()[0]
  missing = subprocess.run(base + ["--detections", str(tmp_path / "absent.json")], capture_output=True, text=True,
                           cwd=root, check=False)
  assert missing.returncode == 2 and "absent.json" in missing.stderr
