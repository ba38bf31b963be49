"""Trains and evaluates a list of configs over several seeds under the results protocol, and writes the table.

  python experiments/zoo.py --configs=centernet_shapes --seeds=3 [--workdir=runs/zoo] [--write_readme]
  python experiments/zoo.py --configs='centernet_shapes,no_skips=centernet_shapes:model.skip_connections=False' \
      --seeds=2 --config_overrides=data.shapes_config=tiny,total_steps=20     # a smoke test

For each row and seed (seed-major: every row's seed 0 first) it runs `experiments/train.py` (or the config's
`train_script`, e.g. four_step for Faster R-CNN's alternating training, `train_stages` runs of total_steps) in
`WORKDIR/<row>/seed<k>` with `--config.seed=k` (resuming from the newest checkpoint there), then
`experiments/eval.py --split=test --checkpoint=best` (the checkpoint with the best validation AP; writes
`eval_test.json`), each in a fresh process. It records the wall time of training and the machine, and after every
run rewrites `WORKDIR/results.md` (and `results.json`): per row the mean ± sample standard deviation over seeds of
the test AP, AP50, AP75, APs, APm, APl, AR100, the validation AP, training minutes and images per second.
`--write_readme` also puts the table between `<!-- zoo:results:begin -->` and `<!-- zoo:results:end -->` in
README.md (`--readme_block=NAME`: between `<!-- NAME:begin -->` and `<!-- NAME:end -->`, a table of its own, e.g.
one family's rows). Rows are written `[NAME=]CONFIG[:KEY=VALUE ...]` (experiments/zoo_rows.py).

Restarting the same command continues where it stopped: finished runs are not recomputed and an interrupted training
resumes from its newest checkpoint. A run folder trained to its last step outside the zoo (train.py with the row's
config and `--config.seed=k`) is adopted: its training time comes from its own records. A run folder trained with
another resolved config is an error, not reused. The zoo does not know about code changes: use a new --workdir after a
change that moves the numbers. `--table_only` writes the table from the finished runs without training. The console
shows which run of how many, each run's progress bar and validation tables, warnings and errors, and a line with each
run's result; a run's final tables go to RUN/stdout.txt, INFO records to WORKDIR/log.txt and RUN/log.txt
(`--log_level=info` shows them).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import logs, machine, run_records, zoo_rows, zoo_table  # noqa: E402
from experiments.run_records import metric_records  # noqa: E402

CONFIGS = flags.DEFINE_string("configs", None, "Rows of the table: comma-separated `[NAME=]CONFIG[:KEY=VALUE ...]` "
                              "(CONFIG: a name in experiments/configs/ or a config file).", required=True)
SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per row: 0 ... N-1, each set as config.seed.", lower_bound=1)
WORKDIR = flags.DEFINE_string("workdir", "runs/zoo", "Folder of the runs (WORKDIR/<row>/seed<k>) and the table.")
OVERRIDES = flags.DEFINE_string("config_overrides", "", "Comma-separated KEY=VALUE config overrides applied to every "
                                "run after the row's own (e.g. data.shapes_config=tiny for a smoke test).")
TEST_SPLIT = flags.DEFINE_string("test_split", "test", "Split the table reports (the best checkpoint is chosen on "
                                 "the config's data.eval_split).")
WRITE_README = flags.DEFINE_bool("write_readme", False, "Also replace the zoo block of --readme with the table.")
README = flags.DEFINE_string("readme", os.path.join(zoo_rows.ROOT, "README.md"), "README holding the zoo markers.")
README_BLOCK = flags.DEFINE_string("readme_block", "zoo:results", "Name of the README block --write_readme replaces "
                                   "(between `<!-- NAME:begin -->` and `<!-- NAME:end -->`): one block per table, "
                                   "so tables whose runs were made apart are regenerated apart.")
TABLE_ONLY = flags.DEFINE_bool("table_only", False, "Train nothing: write the table from the finished runs.")

SCRIPTS = os.path.join(zoo_rows.ROOT, "experiments")


def readme_markers() -> dict[str, str]:
  """Returns `replace_block`'s `begin` and `end` for the README block named by --readme_block."""
  begin, end = zoo_table.markers(README_BLOCK.value)
  return {"begin": begin, "end": end}


class ZooError(RuntimeError):
  """A run failed or a run folder does not belong to its row; the message says which and what to do."""


def load_config(row: zoo_rows.Row, overrides: tuple[str, ...], seed: int):
  """Returns the row's config with `overrides` and `seed` applied, parsed exactly as train.py parses its flags."""
  argv = ["zoo", *run_flags(row, overrides, seed)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except (AttributeError, KeyError) as e:
    raise ZooError(f"row {row.name!r} ({row.spec()}): an override names a field the config does not have "
                   f"({' '.join(row.overrides + overrides)}): {e}") from e
  except (flags.Error, TypeError, ValueError) as e:
    raise ZooError(f"row {row.name!r} ({row.spec()}): bad config or override: {e}") from e
  return values.config


def run_flags(row: zoo_rows.Row, overrides: tuple[str, ...], seed: int) -> list[str]:
  return [*row.flags(), *(f"--config.{o}" for o in overrides), f"--config.seed={seed}"]


def code_version() -> str:
  """Returns the repository's short commit, with `-dirty` when tracked files have changes; "unknown" outside git."""
  def git(*args):
    return subprocess.run(["git", "-C", zoo_rows.ROOT, *args], capture_output=True, text=True, timeout=60)
  try:
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  if head.returncode:
    return "unknown"
  return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def read_json(path: str, default: Any = None) -> Any:
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def write_json(path: str, value: Any) -> None:
  """Writes `value` to `path` atomically (a kill leaves the old file or the new one, never half of one)."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1)
  os.replace(path + ".tmp", path)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
  return out


# Options added to configs after runs were trained, each with the value the code assumes when a config lacks it: a
# run whose config.json lacks the key was trained with that value, so it still matches a config that sets it so.
ABSENT_MEANS = {
    "prefetch_to_device": 0,         # jaxdet/train/loop.py: read and copy inline
    "data.device_augment": False,    # jaxdet/train/inputs.py: augment on the host
    "data.cache_dir": "",
    "data.cache_size": 0,
    "data.read_threads": 1,
    "data.keep_decoded_mib": 1024,   # jaxdet/data/memoized.py: the same batches with any budget
    "model.passthrough": False,      # yolov1_shapes: YOLOv1 without YOLOv2's passthrough (YOLOv2 sets it True)
    "model.shared_head": False,      # yolov1_shapes: the paper's fully connected head
    "model.sigmoid_xy": False,       # yolov1_shapes: YOLOv1's linear (x, y)
    "model.yolov2_scores": False,    # yolov1_shapes: squared errors on linear confidence and classes
    "model.detect_convs": 0,         # yolov1_shapes: the head right after the network
    "model.backbone": "yolov1",      # yolov1_shapes: the 24-convolution network (other configs always had the key)
    # Before 390d5e2 SAT (where on) attacked every step; the runs of that time had it off (yolov3_shapes: sat_steps 0).
    "model.sat_prob": 0.5,
}


def check_run_dir(run_dir: str, config) -> None:
  """Raises ZooError when `run_dir` holds a run of another resolved config (train.py's config.json), naming keys.

  A key missing from the run's config counts as equal when the config sets it to its `ABSENT_MEANS` value.
  """
  stored = read_json(os.path.join(run_dir, "config.json"))
  wanted = json.loads(config.to_json())
  if stored is None or stored == wanted:
    return
  there, now = _flat(stored), _flat(wanted)
  keys = sorted(k for k in there.keys() | now.keys() if there.get(k) != now.get(k)
                and not (k not in there and k in ABSENT_MEANS and now.get(k) == ABSENT_MEANS[k]))
  if not keys:
    return
  differences = ", ".join(f"{k}: {there.get(k)!r} there, {now.get(k)!r} now" for k in keys[:5])
  raise ZooError(f"{run_dir} was trained with another config ({differences}{' ...' if len(keys) > 5 else ''}); "
                 "give the row another name, use another --workdir, or delete the folder")


def settle_interrupted(state: dict[str, Any], run_dir: str) -> None:
  """Gives attempts that never finished (the zoo was killed) the time up to their last metrics record."""
  records = metric_records(run_dir)
  for attempt in state["attempts"]:
    if "seconds" not in attempt:
      times = [r["time"] for r in records if r["time"] >= attempt["start"]]
      attempt["seconds"] = max(times) - attempt["start"] if times else 0.0
      attempt["interrupted"] = True


def checkpoint_steps(run_dir: str) -> list[int]:
  """Returns the steps of the complete checkpoints in RUN_DIR/checkpoints (orbax's numbered folders)."""
  folder = os.path.join(run_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def adopt_training(state: dict[str, Any], run_dir: str, total_steps: int) -> bool:
  """Takes over a run trained to its last step by train.py (or the config's train_script) outside the zoo.

  Returns whether it did: when the zoo has no record of the run and its newest checkpoint is the last step, its
  training time is read from the run's own records: from each start in machine.jsonl to the last metrics record
  before the next start. The attempts are marked `adopted`.
  """
  if state["attempts"] or total_steps not in checkpoint_steps(run_dir):
    return False
  spans = run_records.training_spans(run_dir)
  if not spans:
    return False
  for start, seconds in spans:
    state["attempts"].append({"start": start, "seconds": seconds, "commit": "adopted", "adopted": True})
  state["trained"] = True
  return True


try:  # resolved here, not in the forked child, which should run as little as possible before exec
  _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
  _PRCTL = None


def _die_with_parent() -> None:
  """In the child: receive SIGKILL when the zoo dies (Linux), so that a killed zoo leaves no training behind."""
  if _PRCTL is not None:
    _PRCTL(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


def call(script: str, run_dir: str, args: list[str], lock) -> int:
  """Returns the exit status of experiments/<script>.py run with `args`.

  Its stderr (the progress bar, validation tables, warnings, errors) comes to this console; its stdout (the final
  tables) is appended to RUN_DIR/stdout.txt, as the zoo prints each run's result in one line.
  """
  command = [sys.executable, os.path.join(SCRIPTS, f"{script}.py"), f"--workdir={run_dir}", *args,
             f"--log_level={logs.LOG_LEVEL.value}"]
  logging.info("running %s", " ".join(shlex.quote(c) for c in command))
  sys.stdout.flush()
  sys.stderr.flush()
  with open(os.path.join(run_dir, "stdout.txt"), "a") as stdout:
    # The child holds the run's lock too, so a second zoo cannot start on the run while this training lives on.
    return subprocess.run(command, stdout=stdout, pass_fds=(lock.fileno(),), preexec_fn=_die_with_parent).returncode


def run_result(run_dir: str, state: dict[str, Any], test_split: str) -> dict[str, Any]:
  """Returns the numbers of a finished run for the table (see experiments/zoo_table.py)."""
  test = read_json(os.path.join(run_dir, f"eval_{test_split}.json"))
  records = metric_records(run_dir)
  val = [r["val/AP"] for r in records if r["step"] == test["step"] and r.get("val/AP") is not None]
  if not val:
    raise ZooError(f"{run_dir}: no validation AP recorded for step {test['step']}, the checkpoint evaluated on "
                   f"{test_split}")
  rates = {r["step"]: r["train/images_per_second"] for r in records if r.get("train/images_per_second")}
  machines = sorted({machine.summary(m) for m in machine.read(run_dir)})
  return {"seed": state["seed"], "test": test, "val_AP": val[-1], "train_images": state["train_images"],
          "train_seconds": sum(a["seconds"] for a in state["attempts"]),
          "images_per_second": float(sorted(rates.values())[len(rates) // 2]) if rates else float("nan"),
          "machines": machines, "interrupted": any(a.get("interrupted") for a in state["attempts"]),
          "commits": sorted({a["commit"] for a in state["attempts"]})}


def execute(run: dict[str, Any], index: int, total: int, overrides: tuple[str, ...], test_split: str) -> None:
  """Trains and evaluates one run unless it is finished; its state lives in RUN_DIR/zoo.json."""
  row, seed, run_dir = run["row"], run["seed"], run["dir"]
  title = f"zoo [{index}/{total}] {row.name} seed {seed}"
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "zoo.lock"), "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      raise ZooError(f"{run_dir} is in use by another zoo or a training it started; wait for it or stop it") from e
    path = os.path.join(run_dir, "zoo.json")
    state = read_json(path) or {"row": row.spec(), "seed": seed, "train_images": run["train_images"],
                                "attempts": [], "trained": False, "evaluated": False}
    settle_interrupted(state, run_dir)
    if adopt_training(state, run_dir, run["config"].total_steps):
      print(f"{title}: trained before outside the zoo ({sum(a['seconds'] for a in state['attempts']) / 60:.1f} min "
            "from its records); adopted", file=sys.stderr)
      write_json(path, state)
    if state["evaluated"] and os.path.exists(os.path.join(run_dir, f"eval_{test_split}.json")):
      print(f"{title}: finished before, {test_split} AP {run_result(run_dir, state, test_split)['test']['AP']:.3f}",
            file=sys.stderr)
      return
    args = run_flags(row, overrides, seed)
    if not state["trained"]:
      print(f"{title}: training in {run_dir}", file=sys.stderr)
      attempt = {"start": time.time(), "commit": code_version()}
      state["attempts"].append(attempt)
      write_json(path, state)
      status = None
      try:
        status = call(run["config"].get("train_script", "train"), run_dir, args, lock)
      finally:  # an interrupted attempt keeps the time it ran
        attempt["seconds"] = time.time() - attempt["start"]
        attempt["interrupted"] = status != 0
        write_json(path, state)
      if status:
        raise ZooError(f"training {row.name} seed {seed} failed (exit {status}); its log: {run_dir}/log.txt. "
                       "Run the same command again to resume it.")
      state["trained"] = True
      write_json(path, state)
    print(f"{title}: evaluating the best checkpoint on {test_split}", file=sys.stderr)
    status = call("eval", run_dir, [*args, f"--split={test_split}", "--checkpoint=best"], lock)
    if status:
      raise ZooError(f"evaluating {row.name} seed {seed} failed (exit {status}); its log: {run_dir}/log.txt")
    state["evaluated"] = True
    write_json(path, state)
    result = run_result(run_dir, state, test_split)
    print(f"{title}: {test_split} AP {result['test']['AP']:.3f}, validation AP {result['val_AP']:.3f}, "
          f"{result['train_seconds'] / 60:.1f} min, {result['images_per_second']:.1f} img/s", file=sys.stderr)


def command_line(rows, overrides, seeds, workdir, test_split) -> str:
  parts = ["python experiments/zoo.py", f"--configs={','.join(r.spec() for r in rows)}", f"--seeds={seeds}",
           f"--workdir={workdir}"]
  if overrides:
    parts.append(f"--config_overrides={','.join(overrides)}")
  if test_split != "test":
    parts.append(f"--test_split={test_split}")
  return " ".join([parts[0], *(shlex.quote(p) for p in parts[1:])])


def write_tables(runs, rows, overrides, workdir, test_split) -> str:
  """Returns the results block, after writing it to WORKDIR/results.md and the numbers to WORKDIR/results.json."""
  results = {row.name: [] for row in rows}
  commits = set()
  for run in runs:
    state = read_json(os.path.join(run["dir"], "zoo.json"))
    if state and state.get("evaluated"):
      result = run_result(run["dir"], state, test_split)
      results[run["row"].name].append(result)
      commits.update(result["commits"])
  table = zoo_table.markdown_table([(row.name, results[row.name]) for row in rows], test_split=test_split)
  block = zoo_table.results_block(
      table, row_configs=[(row.name, " ".join([zoo_rows.display_config(row.config),
                                               *(f"--config.{o}" for o in row.overrides)])) for row in rows],
      shared_overrides=overrides, test_split=test_split, commits=sorted(commits),
      command=command_line(rows, overrides, SEEDS.value, workdir, test_split))
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(f"# Results\n\n{block}\n")
  write_json(os.path.join(workdir, "results.json"),
             {name: zoo_table.aggregate(r) for name, r in results.items() if r})
  return block


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  # `kill` ends the zoo as Ctrl-C does: the running training is stopped and its attempt's time recorded.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
  logs.quiet_console()  # the log file opens in zoo() once the work directory is known
  try:
    zoo()
  except ZooError as e:
    logging.info("zoo failed: %s", e)
    print(f"zoo: {e}", file=sys.stderr)
    sys.exit(1)


def zoo() -> None:
  """Parses the rows, runs what is not finished, writes the tables (see the module docstring)."""
  try:
    rows = zoo_rows.parse_rows(CONFIGS.value)
    overrides = zoo_rows.parse_overrides(OVERRIDES.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  workdir = WORKDIR.value
  if WRITE_README.value:  # a README without its markers fails now, not after the training
    with open(README.value) as f:
      try:
        zoo_table.replace_block(f.read(), "", **readme_markers())
      except ValueError as e:
        raise ZooError(f"{README.value}: {e}") from e
  logs.log_to_file(workdir)
  runs = []
  for seed in range(SEEDS.value):
    for row in rows:
      config = load_config(row, overrides, seed)  # every row's overrides are checked before anything trains
      run_dir = os.path.join(workdir, row.name, f"seed{seed}")
      check_run_dir(run_dir, config)
      runs.append({"row": row, "seed": seed, "dir": run_dir, "config": config,
                   "train_images": config.total_steps * config.batch_size * config.get("train_stages", 1)})
  unfinished = [r for r in runs if not (read_json(os.path.join(r["dir"], "zoo.json")) or {}).get("evaluated")]
  print(f"zoo: {len(rows)} rows x {SEEDS.value} seeds = {len(runs)} runs in {workdir}, {len(unfinished)} to do"
        f"{' (--table_only: none run)' if TABLE_ONLY.value and unfinished else ''}", file=sys.stderr)
  if unfinished and not TABLE_ONLY.value:
    from jaxdet.train import inputs  # pylint: disable=g-import-not-at-top
    for run in runs[:len(rows)]:  # generate missing data sets now, outside the timed training
      for split in dict.fromkeys((run["config"].data.train_split, run["config"].data.eval_split, TEST_SPLIT.value)):
        inputs.build_source(run["config"], split)
    for index, run in enumerate(runs, start=1):
      execute(run, index, len(runs), overrides, TEST_SPLIT.value)
      write_tables(runs, rows, overrides, workdir, TEST_SPLIT.value)
  block = write_tables(runs, rows, overrides, workdir, TEST_SPLIT.value)
  print("\n" + block)
  print(f"\nwrote {os.path.join(workdir, 'results.md')} and results.json", file=sys.stderr)
  if WRITE_README.value:
    with open(README.value) as f:
      text = f.read()
    try:
      text = zoo_table.replace_block(text, block, **readme_markers())
    except ValueError as e:
      raise ZooError(f"{README.value}: {e}") from e
    with open(README.value, "w") as f:
      f.write(text)
    print(f"wrote the table into {README.value}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
