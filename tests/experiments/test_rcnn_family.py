"""End to end on the tiny shapes set: R-CNN's multi-stage pipeline (and its resume), Fast R-CNN through train.py,
and eval.py / predict.py on both, whose results pycocotools reads. Selective search runs on first use. Slow."""

import glob
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("skimage")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config.data.shapes_config=tiny", "--config.data.image_size=64", "--config.data.max_boxes=8",
        "--config.data.proposals.workers=0", "--config.model.width=8", "--config.num_pictures=0"]
RCNN = TINY + ["--config.rcnn.finetune_steps=12", "--config.rcnn.checkpoint_every=6", "--config.log_every=6",
               "--config.rcnn.feature_images=8", "--config.rcnn.feature_proposals=30",
               "--config.data.proposals.num=40", "--config.rcnn.svm.steps=50"]
FAST = TINY + ["--config.total_steps=6", "--config.eval_every=6", "--config.checkpoint_every=3",
               "--config.log_every=3", "--config.model.head_features=32", "--config.eval_batch_size=8",
               "--config.data.proposals.num=100"]

pytestmark = pytest.mark.slow


def run(script, config, workdir, *extra, data_dir, ok=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(data_dir))
  cmd = [sys.executable, os.path.join(ROOT, "experiments", f"{script}.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', config)}", f"--workdir={workdir}", *extra]
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  if ok:
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


def load_results_with_pycocotools(data_dir, path):
  from pycocotools.coco import COCO
  from jaxdet.data.shapes import ShapesSource
  coco = COCO()
  coco.dataset = dict(ShapesSource("test", config="tiny", data_dir=data_dir).coco_ground_truth())
  coco.createIndex()
  results = json.load(open(path))
  assert results
  coco.loadRes(str(path))
  return results


def test_rcnn_pipeline_resumes_by_stage_and_predicts(shapes_data_dir, tmp_path):
  workdir = tmp_path / "rcnn"
  # A failure in the features stage (no images) after fine-tuning finished ...
  failed = run("rcnn", "rcnn_shapes.py", workdir, *RCNN, "--config.rcnn.feature_images=-1", data_dir=shapes_data_dir,
               ok=False)
  assert failed.returncode != 0 and "stage finetune:" in failed.stdout
  finetune = sorted(os.listdir(workdir / "finetune"))
  assert "12" in finetune
  stamp = os.path.getmtime(workdir / "finetune" / "12")
  # ... the restart skips the finished stage and completes the rest.
  result = run("rcnn", "rcnn_shapes.py", workdir, *RCNN, data_dir=shapes_data_dir)
  assert "stage finetune: done, skipped" in result.stdout
  assert os.path.getmtime(workdir / "finetune" / "12") == stamp
  stages = json.load(open(workdir / "rcnn" / "stages.json"))
  assert set(stages) == {"finetune", "features", "svm", "bbox", "export"}
  assert os.path.exists(workdir / "eval_validation.json")
  # A finished pipeline recomputes nothing; a removed stage output is recomputed alone (and what follows it).
  again = run("rcnn", "rcnn_shapes.py", workdir, *RCNN, data_dir=shapes_data_dir)
  assert again.stdout.count("done, skipped") == 5
  features = os.path.getmtime(workdir / "rcnn" / "features.npz")
  os.remove(workdir / "rcnn" / "bbox.npz")
  partial = run("rcnn", "rcnn_shapes.py", workdir, *RCNN, data_dir=shapes_data_dir)
  assert partial.stdout.count("done, skipped") == 4 and "stage bbox:" in partial.stdout
  assert os.path.getmtime(workdir / "rcnn" / "features.npz") == features

  run("eval", "rcnn_shapes.py", workdir, *RCNN, "--split=test", "--checkpoint=best", data_dir=shapes_data_dir)
  assert json.load(open(workdir / "eval_test.json"))["split"] == "test"
  load_results_with_pycocotools(shapes_data_dir, workdir / "results_test.json")
  out = tmp_path / "pred"
  run("predict", "rcnn_shapes.py", workdir, *RCNN, "--split=test", f"--out_dir={out}", "--max_images=2",
      data_dir=shapes_data_dir)
  assert len(glob.glob(str(out / "*.png"))) == 2
  load_results_with_pycocotools(shapes_data_dir, out / "results.json")

  # The softmax variant reuses the finished stages: only the export (its own validation) runs.
  soft = tmp_path / "rcnn_softmax"
  result = run("rcnn", "rcnn_softmax_shapes.py", soft, *RCNN, f"--from_workdir={workdir}", data_dir=shapes_data_dir)
  assert result.stdout.count("done, skipped") == 4 and "stage export:" in result.stdout


def test_fast_rcnn_trains_evaluates_and_predicts(shapes_data_dir, tmp_path):
  workdir = tmp_path / "fast"
  run("train", "fast_rcnn_shapes.py", workdir, *FAST, data_dir=shapes_data_dir)
  assert os.path.exists(os.path.join(shapes_data_dir, "proposals", "shapes_tiny", "selective_search_fast",
                                     "train.npz"))
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert any("train/roi_cls_loss" in r for r in records) and any("val/AP" in r for r in records)
  run("eval", "fast_rcnn_shapes.py", workdir, *FAST, "--split=test", "--checkpoint=best", data_dir=shapes_data_dir)
  load_results_with_pycocotools(shapes_data_dir, workdir / "results_test.json")
  out = tmp_path / "pred"
  run("predict", "fast_rcnn_shapes.py", workdir, *FAST, "--split=test", f"--out_dir={out}", "--max_images=2",
      data_dir=shapes_data_dir)
  load_results_with_pycocotools(shapes_data_dir, out / "results.json")
  # The SVD-compressed checkpoint evaluates through the same eval.py.
  svd = tmp_path / "svd"
  run("compress_svd", "fast_rcnn_shapes.py", workdir, *FAST, f"--out_workdir={svd}", "--ranks=16,8",
      data_dir=shapes_data_dir)
  run("eval", "fast_rcnn_shapes.py", svd, *FAST, "--split=test", "--checkpoint=best", "--config.model.svd_ranks=(16,8)",
      data_dir=shapes_data_dir)
  load_results_with_pycocotools(shapes_data_dir, svd / "results_test.json")
