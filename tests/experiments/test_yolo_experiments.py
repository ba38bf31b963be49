"""YOLOv1 to YOLOv4 through the scripts: a brief training on the tiny shapes set, predict -> COCO results
json -> pycocotools, equal to the evaluation train.py wrote (slow); the k-means anchor script's clusters, in grid
cells (v2) and in pixels over three scales (v3) (fast)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--config.data.shapes_config=tiny", "--config.data.image_size=64", "--config.data.max_boxes=8",
          "--config.total_steps=8", "--config.batch_size=8", "--config.eval_batch_size=8", "--config.log_every=2",
          "--config.eval_every=8", "--config.checkpoint_every=4", "--config.optim.warmup_steps=2"]
OVERRIDES = {
    "yolov1": ["--config.model.width=8", "--config.model.hidden=64", "--config.model.output_stride=16"],
    "yolov2": ["--config.model.width=4", "--config.model.output_stride=16", "--config.data.multiscale_sizes=(48,64)",
               "--config.data.multiscale_period=2"],
    "yolov3": ["--config.model.width=2", "--config.model.depths=(1,1,1,1,1)", "--config.data.multiscale_sizes=(32,64)",
               "--config.data.multiscale_period=2"],
    # every YOLOv4 trick on: the config's (Mosaic, CIoU, grid sensitivity, several anchors) and the paper's others
    # (CmBN over 4 mini-batches of the batch of 8, SAT, label smoothing, cosine, DIoU-NMS); one training size, as
    # multi-scale training is v2's and v3's above (a compilation of SAT's step per size)
    "yolov4": ["--config.model.width=2", "--config.model.depths=(1,1,1,1,1)", "--config.data.multiscale_sizes=(64,)",
               "--config.model.cmbn=4", "--config.model.sat_steps=1", "--config.model.label_smoothing=0.1",
               "--config.optim.schedule=cosine", "--config.model.nms=diou"],
}


def run(script, config, workdir, *extra, data_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(data_dir))
  cmd = [sys.executable, os.path.join(ROOT, "experiments", f"{script}.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', config + '_shapes.py')}", *extra]
  if workdir is not None:
    cmd.append(f"--workdir={workdir}")
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


@pytest.mark.slow
@pytest.mark.parametrize("name", ["yolov1", "yolov2", "yolov3", "yolov4"])
def test_brief_training_then_predict_gives_results_pycocotools_scores_alike(name, shapes_data_dir, tmp_path):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  from jaxdet.data.shapes import ShapesSource

  workdir = tmp_path / name
  run("train", name, workdir, *COMMON, *OVERRIDES[name], data_dir=shapes_data_dir)
  losses = [r["train/loss"] for r in map(json.loads, open(workdir / "metrics.jsonl")) if "train/loss" in r]
  assert len(losses) == 4 and np.all(np.isfinite(losses))
  out = tmp_path / "predictions"
  run("predict", name, workdir, *COMMON, *OVERRIDES[name], "--split=validation", f"--out_dir={out}",
      "--max_images=2", "--checkpoint=best", data_dir=shapes_data_dir)
  results = json.load(open(out / "results.json"))
  assert results and all(0.0 <= r["score"] <= 1.0 for r in results)

  coco = COCO()
  coco.dataset = dict(ShapesSource("validation", config="tiny", data_dir=shapes_data_dir).coco_ground_truth())
  coco.createIndex()
  evaluation = COCOeval(coco, coco.loadRes(str(out / "results.json")), "bbox")
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  ours = json.load(open(workdir / "eval_validation.json"))  # train.py's evaluation of the same (last = best) step
  assert ours["step"] == 8
  np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["AR100"]], evaluation.stats[[0, 1, 8]], atol=1e-6)


def test_anchor_script_is_reproducible_and_is_kmeans_of_the_training_boxes(shapes_data_dir):
  import jax
  sys.path.insert(0, ROOT)
  from experiments.yolo_anchors import dimension_clusters, mean_best_iou, training_box_sizes
  from jaxdet.data.shapes import ShapesSource
  from jaxdet.ops.kmeans import kmeans_anchors

  source = ShapesSource("train", config="tiny", data_dir=shapes_data_dir)
  wh = training_box_sizes(source, 128)  # 64-pixel images letterboxed to 128: twice the stored sizes
  stored = np.array([a["bbox"][2:] for a in source.coco_ground_truth()["annotations"]], np.float32)
  np.testing.assert_allclose(wh, 2 * stored, rtol=1e-6)
  anchors, fit = dimension_clusters(wh, k=5, stride=32)
  again, _ = dimension_clusters(wh, k=5, stride=32)
  np.testing.assert_array_equal(anchors, again)
  direct, direct_fit = kmeans_anchors(wh / 32, 5, key=jax.random.PRNGKey(0))
  np.testing.assert_allclose(anchors, direct, atol=5e-5)
  assert fit == pytest.approx(float(direct_fit), abs=1e-3)
  assert np.all(np.diff(anchors.prod(1)) >= 0)
  assert fit > mean_best_iou(wh / 32, np.full((5, 2), np.median(wh / 32)))  # better than one median shape

  result = run("yolo_anchors", "yolov2", None, "--config.data.shapes_config=tiny", "--config.model.output_stride=32",
               data_dir=shapes_data_dir)
  assert repr(tuple(tuple(float(v) for v in a) for a in anchors)) in result.stdout
  with pytest.raises(AssertionError):  # --check fails: the default config's anchors are for the default set
    run("yolo_anchors", "yolov2", None, "--config.data.shapes_config=tiny", "--check", data_dir=shapes_data_dir)
  # Another number of anchors (hand-picked ones beside k = 5 clusters) is compared, not a crash.
  hand = "((0.5,1.0),(1.0,1.0),(1.0,0.5),(2.0,2.0),(4.0,4.0),(2.0,4.0),(4.0,2.0))"
  result = run("yolo_anchors", "yolov2", None, "--config.data.shapes_config=tiny", "--config.model.output_stride=32",
               f"--config.model.anchors={hand}", "--k=5", data_dir=shapes_data_dir)
  assert "config.model.anchors (mean best IoU" in result.stdout and "(4.0, 2.0)" in result.stdout


def test_anchor_script_clusters_yolov3_anchors_in_pixels_over_three_scales(shapes_data_dir):
  sys.path.insert(0, ROOT)
  from experiments.yolo_anchors import dimension_clusters, training_box_sizes
  from jaxdet.data.shapes import ShapesSource

  wh = training_box_sizes(ShapesSource("train", config="tiny", data_dir=shapes_data_dir), 128)
  anchors, _ = dimension_clusters(wh, k=9, stride=1)  # pixels: the config has no output stride
  result = run("yolo_anchors", "yolov3", None, "--config.data.shapes_config=tiny", data_dir=shapes_data_dir)
  assert "anchors in input pixels" in result.stdout
  assert repr(tuple(tuple(float(v) for v in a) for a in anchors)) in result.stdout  # k = the config's 9
  for level in range(3):
    assert f"scale {level} (finest first): {[tuple(float(v) for v in a) for a in anchors[3 * level:3 * level + 3]]}" \
        in result.stdout
