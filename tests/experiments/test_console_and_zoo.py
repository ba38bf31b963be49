"""End to end: train.py's console stays short (INFO records go to WORKDIR/log.txt) and still shows the COCO table;
zoo.py trains two tiny rows over two seeds, survives a kill -9, writes the table from the runs' eval_test.json, and
recomputes nothing when run again. Tiny `shapes` and a narrow CenterNet; marked slow."""

import fcntl
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.experiments.test_experiments import ROOT, script

pytestmark = pytest.mark.slow

ZOO = os.path.join(ROOT, "experiments", "zoo.py")
TINY = ("data.shapes_config=tiny,data.image_size=64,data.max_boxes=8,model.width=8,model.neck_features=(16,16,16),"
        "total_steps=6,batch_size=8,eval_batch_size=8,log_every=1,eval_every=3,checkpoint_every=1,"
        "keep_checkpoints=2,optim.warmup_steps=1,optim.learning_rate=0.003")
ROWS = "wide=centernet_shapes:model.head_features=16,narrow=centernet_shapes:model.head_features=8"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def train(workdir, data_dir, *extra):
  """Returns (stdout, stderr) of a tiny train.py run, as bytes decode them: tqdm's \r redraws stay \r."""
  cmd, env = script("train", workdir, *extra, env={"JAXDET_DATA_DIR": str(data_dir)})
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=600)
  stdout, stderr = result.stdout.decode(), result.stderr.decode()
  assert result.returncode == 0, stdout[-3000:] + stderr[-5000:]
  return stdout, stderr


def test_train_console_is_short_and_the_log_file_holds_the_rest(tmp_path):
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"  # a fresh data dir: generating it is part of the output
  # Checkpoints every 3 steps, not 2: orbax rightly warns when a save waits for the previous one, which a loaded
  # machine can make happen at 2.
  stdout, stderr = train(workdir, data_dir, "--config.checkpoint_every=3")
  console = stdout + stderr
  # Data generation, two evaluations and checkpoints, as the README's main job has; a terminal shows one line per
  # "\n" (tqdm redraws its bar after "\r").
  assert console.count("\n") <= 60, console
  assert "Average Precision  (AP) @[ IoU=0.50:0.95" in stdout and "step 12: validation" in stderr
  assert "generating the shapes/tiny data set" in stderr and "generated shapes/tiny" in stderr
  info = ("Saving checkpoint at step", "Creating tmp directory", "CheckpointManager created", "Generating dataset",
          "Downloading and preparing", "Generating splits", "Load dataset info", "devices: ")
  for record in info:
    assert record not in console, record
  log = open(workdir / "log.txt").read()
  for record in ("devices: ", "Saving checkpoint at step 3", "Generating dataset shapes"):
    assert record in log, record
  assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} I ", log, re.M)
  assert json.loads(open(workdir / "machine.jsonl").readline())["backend"] == "cpu"

  _, again = train(workdir, data_dir, "--log_level=info")  # a verbosity flag shows the INFO records
  assert "devices: " in again and "started: " in again
  assert open(workdir / "log.txt").read().startswith(log)  # appended


def zoo(workdir, data_dir, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAXDET_DATA_DIR=str(data_dir))
  return [sys.executable, ZOO, f"--configs={ROWS}", "--seeds=2", f"--workdir={workdir}", f"--config_overrides={TINY}",
          *extra], env


def run_zoo(workdir, data_dir, *extra):
  cmd, env = zoo(workdir, data_dir, *extra)
  result = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return result


def snapshot(workdir):
  """Returns what a recomputation would change: every run's metrics, evaluations and checkpoints."""
  files = sorted(glob.glob(str(workdir / "*" / "seed*" / "*.json*")))
  return {f: open(f).read() for f in files} | {"checkpoints": sorted(glob.glob(str(workdir / "*/seed*/checkpoints/*")))}


def test_zoo_trains_resumes_and_tables_the_runs(tmp_path, shapes_data_dir):
  workdir = tmp_path / "zoo"
  readme = tmp_path / "README.md"
  readme.write_text("# x\n\nbefore\n<!-- zoo:results:begin -->\nold\n<!-- zoo:results:end -->\nafter\n")

  # Killed (-9) during the first run's training: its training process goes with it, the next zoo resumes it.
  cmd, env = zoo(workdir, shapes_data_dir)
  process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = workdir / "wide" / "seed0"
  deadline = time.time() + 600
  while not (first / "checkpoints" / "1").exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.1)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "the zoo ended before it could be killed"
  with open(first / "zoo.lock", "w") as lock:  # the training child died with the zoo, releasing the run's lock
    for _ in range(100):
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
      except BlockingIOError:
        time.sleep(0.1)
    else:
      pytest.fail("the training process outlived the killed zoo")
  assert not (first / "eval_test.json").exists()

  result = run_zoo(workdir, shapes_data_dir, "--write_readme", f"--readme={readme}")
  assert "zoo [1/4] wide seed 0: training" in result.stderr and "zoo [4/4] narrow seed 1" in result.stderr
  assert "resumed from step" in result.stderr  # the killed run went on from its checkpoint
  attempts = json.load(open(first / "zoo.json"))["attempts"]
  assert [a["interrupted"] for a in attempts] == [True, False]

  aggregated = json.load(open(workdir / "results.json"))
  table = open(workdir / "results.md").read()
  for row in ("wide", "narrow"):
    runs = [workdir / row / f"seed{s}" for s in range(2)]
    tests = [json.load(open(r / "eval_test.json")) for r in runs]
    line = next(l for l in table.splitlines() if l.startswith(f"| `{row}` |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    for i, key in enumerate(METRICS, start=1):
      values = [t[key] for t in tests]
      if -1.0 in values:
        assert cells[i] == "—"
        continue
      assert aggregated[row][f"test/{key}"]["values"] == values
      assert aggregated[row][f"test/{key}"]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
      assert aggregated[row][f"test/{key}"]["spread"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
      assert cells[i] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    for r, t in zip(runs, tests):
      assert t["split"] == "test"
      records = [json.loads(l) for l in open(r / "metrics.jsonl")]
      val = {rec["step"]: rec["val/AP"] for rec in records if "val/AP" in rec}
      assert sorted(val) == [3, 6] and val[t["step"]] == max(val.values())  # the best checkpoint by validation AP
    assert aggregated[row]["val/AP"]["values"] == [
        next(json.loads(l)["val/AP"] for l in open(r / "metrics.jsonl") if json.loads(l).get("val/AP") is not None
             and json.loads(l)["step"] == t["step"]) for r, t in zip(runs, tests)]
    assert cells[-2] == ("2*" if row == "wide" else "2") and "CPU" in cells[-1]
  text = readme.read_text()
  assert text.startswith("# x\n\nbefore\n<!-- zoo:results:begin -->\n")
  assert text.endswith("<!-- zoo:results:end -->\nafter\n")
  assert "| `wide` |" in text and "old" not in text and "--seeds=2" in text
  assert result.stdout.strip().splitlines()[2].startswith("| row | AP (test) |")

  before = snapshot(workdir)
  again = run_zoo(workdir, shapes_data_dir)
  assert "4 runs in" in again.stderr and "0 to do" in again.stderr and "training in" not in again.stderr
  assert snapshot(workdir) == before  # nothing recomputed
  assert open(workdir / "results.md").read() == table

  # Another config under a finished row's name is refused, not mixed into the row.
  cmd, env = zoo(workdir, shapes_data_dir)
  cmd[2] = "--configs=wide=centernet_shapes:model.head_features=4"
  refused = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert refused.returncode == 1 and "was trained with another config" in refused.stderr
  assert "model.head_features: 16 there, 4 now" in refused.stderr
