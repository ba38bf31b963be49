"""End to end through the command-line scripts: train + evaluate, eval and predict on a checkpoint, kill -9 and
resume to the same numbers, and two processes (jax.distributed, 4 CPU devices each) giving the losses of one.

All runs use the `tiny` shapes set (64 x 64) and a narrow CenterNet, so each is compile-dominated; marked slow.
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "configs", "centernet_shapes.py")
STEPS = 12
OVERRIDES = [
    "--config.data.shapes_config=tiny", "--config.data.image_size=64", "--config.data.max_boxes=8",
    "--config.model.width=8", "--config.model.neck_features=(16,16,16)", "--config.model.head_features=16",
    f"--config.total_steps={STEPS}", "--config.batch_size=8", "--config.eval_batch_size=8", "--config.log_every=1",
    "--config.eval_every=6", "--config.checkpoint_every=2", "--config.keep_checkpoints=3",
    "--config.optim.warmup_steps=2", "--config.optim.learning_rate=0.003",
]

pytestmark = pytest.mark.slow


def script(name, workdir, *extra, devices=1, env=None):
  """Returns the command line and environment of experiments/<name>.py on the tiny config."""
  environ = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  environ.update(env or {})
  return [sys.executable, os.path.join(ROOT, "experiments", f"{name}.py"), f"--config={CONFIG}",
          f"--workdir={workdir}", *OVERRIDES, *extra], environ


def run(name, workdir, *extra, data_dir, devices=1, timeout=600):
  cmd, env = script(name, workdir, *extra, devices=devices, env={"JAXDET_DATA_DIR": str(data_dir)})
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


def checkpoint_steps(workdir):
  """Steps of the complete checkpoints (a save cut short by a kill leaves a `*.orbax-checkpoint-tmp` folder)."""
  names = (os.path.basename(p) for p in glob.glob(str(workdir / "checkpoints" / "*")))
  return sorted(int(n) for n in names if n.isdigit())


def train_losses(workdir):
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  losses = {}
  for r in records:
    if "train/loss" in r:
      losses[r["step"]] = r["train/loss"]  # a resumed run rewrites the steps after its checkpoint
  return losses


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, shapes_data_dir):
  workdir = tmp_path_factory.mktemp("unbroken")
  result = run("train", workdir, data_dir=shapes_data_dir)
  return workdir, result


def test_train_evaluates_and_writes_everything(unbroken):
  workdir, result = unbroken
  assert "Average Precision  (AP) @[ IoU=0.50:0.95" in result.stdout
  metrics = json.load(open(workdir / "eval_validation.json"))
  assert metrics["step"] == STEPS
  for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
    assert -1.0 <= metrics[key] <= 1.0
  assert glob.glob(str(workdir / "events.out.tfevents.*")) and (workdir / "pr_validation.png").exists()
  assert Image.open(workdir / "detections_validation.png").size[0] >= 4 * 512  # 8 pictures, 4 a row, 512 px each
  losses = train_losses(workdir)
  assert sorted(losses) == list(range(1, STEPS + 1)) and all(np.isfinite(list(losses.values())))
  assert "train:" in result.stderr and "img/s" in result.stderr  # the progress bar
  steps = checkpoint_steps(workdir)
  evaluated = {r["step"]: r["val/AP"] for r in map(json.loads, open(workdir / "metrics.jsonl")) if "val/AP" in r}
  assert sorted(evaluated) == [6, 12]
  assert steps[-3:] == [8, 10, 12]  # the newest three ...
  assert max(evaluated[s] for s in evaluated if s in steps) == max(evaluated.values())  # ... and a best by AP


def test_eval_and_predict_on_the_best_checkpoint(unbroken, shapes_data_dir, tmp_path):
  workdir, _ = unbroken
  during_training = json.load(open(workdir / "eval_validation.json"))
  run("eval", workdir, "--split=validation", f"--checkpoint={STEPS}", data_dir=shapes_data_dir)
  again = json.load(open(workdir / "eval_validation.json"))
  assert again == during_training  # eval.py reproduces the evaluation the training run made at that step
  assert json.loads(open(workdir / "metrics.jsonl").readlines()[-1])["eval_validation/AP"] == again["AP"]

  # Only the model's variables are restored: another optimiser in the config does not matter.
  result = run("eval", workdir, "--split=test", "--checkpoint=best", "--config.optim.optimizer=sgd",
               data_dir=shapes_data_dir)
  assert "Average Recall" in result.stdout
  metrics = json.load(open(workdir / "eval_test.json"))
  assert metrics["split"] == "test" and "AP" in metrics
  from pycocotools.coco import COCO  # the results json is what pycocotools reads
  from jaxdet.data.shapes import ShapesSource
  ground_truth = ShapesSource("test", config="tiny", data_dir=shapes_data_dir).coco_ground_truth()
  coco = COCO()
  coco.dataset = dict(ground_truth)
  coco.createIndex()
  results = json.load(open(workdir / "results_test.json"))
  assert results, "a trained detector keeps its top-100 peaks: the results cannot be empty"
  coco.loadRes(str(workdir / "results_test.json"))

  out = tmp_path / "pred"
  run("predict", workdir, "--split=test", f"--out_dir={out}", "--max_images=3", "--checkpoint=best",
      data_dir=shapes_data_dir)
  pngs = glob.glob(str(out / "*.png"))
  assert len(pngs) == 3
  for png in pngs:  # 64 x 64 images drawn at 8x, under a strip with the image id, threshold and legend
    width, height = Image.open(png).size
    assert width == 512 and height > 512
  assert json.load(open(out / "results.json")) == results  # the same checkpoint, the same detections


# Runs experiments/<script>.py (argv[1:]) with Checkpointer.save patched to SIGKILL the process when asked to save
# step KILL_AT, once the save before it is on disk: a kill between two checkpoints at a known step. Killing from the
# outside when a checkpoint folder appears races the loop, which on a fast machine finishes all steps first.
KILL_AT = 10
KILLED_RUN = f"""
import os, runpy, signal, sys
from jaxdet.train.checkpoint import Checkpointer
save = Checkpointer.save
def save_or_die(self, step, *args, **kwargs):
  if step == {KILL_AT}:
    self.wait()
    os.kill(os.getpid(), signal.SIGKILL)
  return save(self, step, *args, **kwargs)
Checkpointer.save = save_or_die
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_run_resumes_to_the_same_numbers(unbroken, shapes_data_dir, tmp_path):
  reference, _ = unbroken
  workdir = tmp_path / "killed"
  cmd, env = script("train", workdir, env={"JAXDET_DATA_DIR": str(shapes_data_dir)})
  process = subprocess.run([cmd[0], "-c", KILLED_RUN, *cmd[1:]], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
  assert process.returncode == -signal.SIGKILL, f"the run was not killed mid-way:\n{process.stderr[-5000:]}"
  assert max(train_losses(workdir)) == KILL_AT  # the steps after the newest checkpoint are lost work
  assert checkpoint_steps(workdir)[-1] == KILL_AT - 2
  checkpoints = checkpoint_steps(workdir)
  result = run("train", workdir, data_dir=shapes_data_dir)
  assert f"resumed from step {checkpoints[-1]}" in result.stderr  # it did not start again from step 0
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  resumed = [i for i, r in enumerate(records) if r.get("resumed")]
  assert len(resumed) == 1 and records[resumed[0]]["step"] == checkpoints[-1]
  after = [r["step"] for r in records[resumed[0]:] if "train/loss" in r]
  assert after == list(range(checkpoints[-1] + 1, STEPS + 1))
  got, want = train_losses(workdir), train_losses(reference)
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)
  final, expected = json.load(open(workdir / "eval_validation.json")), json.load(open(reference / "eval_validation.json"))
  for key in ("AP", "AP50", "AR100"):
    assert final[key] == pytest.approx(expected[key], abs=1e-6), key


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_losses_of_one(unbroken, shapes_data_dir, tmp_path):
  reference, _ = unbroken
  workdir = tmp_path / "two"
  address = f"localhost:{free_port()}"
  processes = []
  for pid in range(2):
    cmd, env = script("train", workdir, f"--coordinator_address={address}", "--num_processes=2",
                      f"--process_id={pid}", devices=4, env={"JAXDET_DATA_DIR": str(shapes_data_dir)})
    processes.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), "\n".join(o[-4000:] for o in outputs)
  assert "devices: " in open(workdir / "log.txt").read()  # INFO records go to the log file, one per process
  assert "devices: " in open(workdir / "log.process1.txt").read()
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records if "train/loss" in r] == list(range(1, STEPS + 1))  # one writer only
  got, want = train_losses(workdir), train_losses(reference)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-4)
  final, expected = json.load(open(workdir / "eval_validation.json")), json.load(open(reference / "eval_validation.json"))
  for key in ("AP", "AP50", "AR100"):
    assert final[key] == pytest.approx(expected[key], abs=2e-3), key
