"""Faster R-CNN's 4-step alternating training end to end (experiments/four_step.py on the tiny shapes set): each
step starts from the previous one, step 2's proposal network is step 1's, frozen layers are bit-identical across
the steps that freeze them, trained ones move; a second invocation finds every step finished."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdet.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["--config.data.shapes_config=tiny", "--config.data.image_size=64", "--config.data.max_boxes=8",
             "--config.total_steps=3", "--config.batch_size=8", "--config.eval_batch_size=8", "--config.log_every=1",
             "--config.model.width=8", "--config.model.rpn_features=16", "--config.model.head_features=32",
             "--config.model.anchor_sizes=(16.,32.,64.)", "--config.model.train_post_nms_top_n=64",
             "--config.model.test_post_nms_top_n=32", "--config.model.roi_batch_size=32", "--config.num_pictures=0"]

pytestmark = pytest.mark.slow


def four_step(workdir, data_dir):
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "four_step.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', 'faster_rcnn_4step_shapes.py')}",
         f"--workdir={workdir}", *OVERRIDES]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(data_dir))
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  return result


def variables(workdir):
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  state = checkpointer.restore_raw(checkpointer.latest_step())
  checkpointer.close()
  return state["params"], state.get("batch_stats", {})


def same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_four_steps_chain_freeze_and_resume(tmp_path, shapes_data_dir):
  result = four_step(tmp_path, shapes_data_dir)
  assert all(f"step {k} of 4" in result.stdout for k in range(1, 5))
  p1, s1 = variables(tmp_path / "step1")
  p2, s2 = variables(tmp_path / "step2")
  p3, s3 = variables(tmp_path / "step3")
  p4, s4 = variables(tmp_path / "step4")
  # Step 2 proposes with step 1's network, frozen, and trains a new backbone and head.
  assert same(p2["proposer_backbone"], p1["backbone"]) and same(s2["proposer_backbone"], s1["backbone"])
  assert same(p2["rpn"], p1["rpn"])
  assert not same(p2["backbone"], p1["backbone"]) and not same(p2["roi_head"], p1["roi_head"])
  # Step 3 shares step 2's backbone, frozen (batch statistics too), and fine-tunes the RPN.
  assert same(p3["backbone"], p2["backbone"]) and same(s3["backbone"], s2["backbone"])
  assert same(p3["roi_head"], p2["roi_head"]) and not same(p3["rpn"], p2["rpn"])
  assert "proposer_backbone" not in p3
  # Step 4 fine-tunes only the RoI head.
  assert same(p4["backbone"], p3["backbone"]) and same(s4["backbone"], s3["backbone"])
  assert same(p4["rpn"], p3["rpn"]) and not same(p4["roi_head"], p3["roi_head"])
  again = four_step(tmp_path, shapes_data_dir)
  assert all(f"step {k}: finished" in again.stdout for k in range(1, 5))
  # The work directory reads as a finished run of the final detector: eval.py on it evaluates step 4's weights.
  assert os.path.realpath(tmp_path / "checkpoints") == os.path.realpath(tmp_path / "step4" / "checkpoints")
  records = [line for line in open(tmp_path / "metrics.jsonl")]
  assert len(records) == sum(len(open(tmp_path / f"step{k}" / "metrics.jsonl").readlines()) for k in range(1, 5))
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "eval.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', 'faster_rcnn_4step_shapes.py')}",
         f"--workdir={tmp_path}", "--split=test", "--checkpoint=latest", *OVERRIDES]
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(shapes_data_dir))
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.load(open(tmp_path / "eval_test.json"))["step"] == 3
