"""IoU-Net and KL-Loss end to end through the scripts on the tiny shapes set: train briefly into the results
protocol's run layout, evaluate the best checkpoint on test (its results json read back by pycocotools, whose
stats equal eval.py's), and the ablation script evaluating every inference variant of those checkpoints."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {"data.shapes_config": "tiny", "data.image_size": 64, "data.max_boxes": 8, "total_steps": 6,
        "batch_size": 8, "eval_batch_size": 8, "log_every": 1, "eval_every": 3, "checkpoint_every": 3,
        "num_pictures": 0, "optim.warmup_steps": 1, "model.width": 8, "model.fpn_features": 16,
        "model.rpn_features": 16, "model.head_features": 32, "model.train_post_nms_top_n": 64,
        "model.test_post_nms_top_n": 32, "model.roi_batch_size": 32}
EXTRA = {"faster_rcnn_iounet_shapes": {"model.iou_features": 32, "model.iou_samples": 16,
                                       "model.pre_nms_top_k": 64},
         "faster_rcnn_kl_shapes": {}}
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")



def test_ap_at_iou_reads_the_precision_array_as_pycocotools_summarizes():
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  from jaxdet.eval.coco import ap_at_iou, evaluate_coco

  rng = np.random.default_rng(0)
  images = [{"id": i, "width": 100, "height": 100} for i in range(6)]
  annotations, detections = [], []
  for i in range(6):
    for k in range(3):
      x, y, w, h = rng.uniform(0, 60, 2).tolist() + rng.uniform(10, 40, 2).tolist()
      annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1 + k % 2, "bbox": [x, y, w, h],
                          "area": w * h, "iscrowd": 0})
      jitter = rng.normal(0, 2.0, 4)  # IoUs spread over 0.5-1: AP at 0.5, 0.75, 0.9 all differ
      detections.append({"image_id": i, "category_id": 1 + k % 2, "score": float(rng.uniform()),
                         "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]]})
  ground_truth = {"images": images, "annotations": annotations,
                  "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
  result = evaluate_coco(ground_truth, detections)
  coco = COCO()
  coco.dataset = ground_truth
  coco.createIndex()
  evaluation = COCOeval(coco, coco.loadRes(detections), "bbox")
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()

  def summarized(iou):  # pycocotools' summarize(): its precision array at one IoU, area all, 100 detections
    p = evaluation.eval["precision"][np.flatnonzero(np.isclose(evaluation.params.iouThrs, iou)), :, :, 0, -1]
    return float(np.mean(p[p > -1]))

  want = {t: summarized(t) for t in (0.5, 0.75, 0.9)}
  assert want[0.5] == pytest.approx(evaluation.stats[1]) and want[0.75] == pytest.approx(evaluation.stats[2])
  assert len(set(np.round(list(want.values()), 6))) == 3
  for t, value in want.items():
    assert ap_at_iou(result, t) == pytest.approx(value, abs=1e-6)
  with pytest.raises(ValueError, match="thresholds"):
    ap_at_iou(result, 0.52)


def run(script, *args, data_dir):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(data_dir))
  result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", script), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


def test_merge_joins_parts_in_variant_order_and_combines_seeds(tmp_path):
  def metrics(ap):
    return {"AP": ap, "AP50": 0.9, "AP75": 0.7, "AP90": 0.2, "APs": 0.5, "APm": 0.6, "APl": 0.8, "skipped": 0}

  def part(name, split, rows):
    path = tmp_path / name
    path.write_text(json.dumps({"split": split, "checkpoint": "best", "rows": [
        {"variant": v, "label": v, "config": "c", "model": {}, "seeds": {s: metrics(ap) for s, ap in seeds.items()}}
        for v, seeds in rows]}))
    return str(path)

  kl = part("kl.json", "test", [("kl_voting", {"1": 0.60, "0": 0.64})])
  seed0 = part("seed0.json", "test", [("baseline", {"0": 0.50})])
  seed1 = part("seed1.json", "test", [("baseline", {"1": 0.52})])
  out = tmp_path / "joined.json"
  result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "ablate_localization.py"),
                           f"--merge={kl},{seed0},{seed1}", f"--out={out}"], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  joined = json.load(open(out))
  assert [row["variant"] for row in joined["rows"]] == ["baseline", "kl_voting"]  # VARIANTS' order, not the files'
  assert [list(row["seeds"]) for row in joined["rows"]] == [["0", "1"], ["0", "1"]]
  assert "| baseline | c | 0.510 ± 0.010 |" in result.stdout  # mean ± half the range over both files' seeds
  other = part("validation.json", "validation", [("kl_nms", {"0": 0.6})])
  result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "ablate_localization.py"),
                           f"--merge={kl},{other}"], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode != 0 and "disagree on split" in result.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shapes_data_dir):
  """Both detectors trained for 6 steps into RUNS/<config>/seed0, then evaluated on test with eval.py."""
  root = tmp_path_factory.mktemp("runs")
  for name, extra in EXTRA.items():
    flags = [f"--config={os.path.join(ROOT, 'experiments', 'configs', name + '.py')}",
             f"--workdir={root / name / 'seed0'}", "--config.seed=0",
             *(f"--config.{k}={v}" for k, v in (TINY | extra).items())]
    run("train.py", *flags, data_dir=shapes_data_dir)
    run("eval.py", *flags, "--split=test", "--checkpoint=best", data_dir=shapes_data_dir)
  return root


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXTRA))
def test_results_json_reads_back_in_pycocotools(runs, shapes_data_dir, name):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval
  from jaxdet.data.shapes import ShapesSource

  workdir = runs / name / "seed0"
  ground_truth = ShapesSource("test", config="tiny", data_dir=shapes_data_dir).coco_ground_truth()
  coco = COCO()
  coco.dataset = dict(ground_truth)
  coco.createIndex()
  results = json.load(open(workdir / "results_test.json"))
  assert results, "a briefly trained detector still keeps detections above the 0.05 threshold"
  evaluation = COCOeval(coco, coco.loadRes(str(workdir / "results_test.json")), "bbox")
  evaluation.evaluate()
  evaluation.accumulate()
  evaluation.summarize()
  ours = json.load(open(workdir / "eval_test.json"))
  np.testing.assert_allclose([ours[k] for k in STATS], evaluation.stats, atol=1e-6)


@pytest.mark.slow
def test_ablation_evaluates_every_variant(runs, shapes_data_dir, tmp_path):
  variants = ["iounet_nms", "iounet_guided", "iounet_guided_refine", "kl_nms", "kl_voting", "kl_soft_voting"]
  overrides = [f"--override={k}={v}" for k, v in TINY.items() if k.startswith(("data.", "model.", "eval_"))]
  overrides += [f"--override=faster_rcnn_iounet_shapes:{k}={v}" for k, v in EXTRA["faster_rcnn_iounet_shapes"].items()]
  out = tmp_path / "ablation.json"
  result = run("ablate_localization.py", f"--runs={runs}", "--seeds=0", "--split=test", f"--out={out}",
               f"--variants={','.join(variants)}", *overrides, data_dir=shapes_data_dir)
  assert "| + IoU-guided NMS |" in result.stdout and "AP90" in result.stdout
  rows = {row["variant"]: row["seeds"]["0"] for row in json.load(open(out))["rows"]}
  assert list(rows) == variants
  for name, metrics in rows.items():
    assert all(-1 <= metrics[k] <= 1 for k in ("AP", "AP50", "AP75", "AP90")), name
  # The configs' defaults (IoU-guided NMS; KL with variance voting) are what eval.py evaluated.
  for variant, name in (("iounet_guided", "faster_rcnn_iounet_shapes"), ("kl_voting", "faster_rcnn_kl_shapes")):
    ours = json.load(open(runs / name / "seed0" / "eval_test.json"))
    for key in ("AP", "AP50", "AP75"):
      assert rows[variant][key] == pytest.approx(ours[key], abs=1e-9), (variant, key)
