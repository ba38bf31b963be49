"""The zoo's pure parts: rows parsed from --configs, mean and spread against NumPy, the markdown table, the README
block replacement (also through zoo.py's --readme_block), and the console/file split of log records."""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from experiments import zoo_rows, zoo_table

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def result(seed, rng, **changes):
  test = {k: float(rng.uniform(0, 1)) for k in METRICS}
  out = {"seed": seed, "test": test, "val_AP": float(rng.uniform(0, 1)), "train_seconds": float(rng.uniform(60, 900)),
         "images_per_second": float(rng.uniform(10, 100)), "train_images": 54400,
         "machines": ["AMD EPYC, 2 cores, CPU, jax 0.10.2"], "interrupted": False}
  out.update(changes)
  return out


def cells(table, row):
  line = next(l for l in table.splitlines() if l.startswith(f"| `{row}` |"))
  return [c.strip() for c in line.strip("|").split("|")]


def header(table):
  return [c.strip() for c in table.splitlines()[0].strip("|").split("|")]


@given(st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_mean_and_spread_equal_numpy(values):
  mean, spread = zoo_table.mean_and_spread(values)
  assert mean == pytest.approx(np.mean(values), abs=1e-12)
  if len(values) == 1:
    assert spread is None
  else:
    assert spread == pytest.approx(np.std(values, ddof=1), abs=1e-12)


def test_format_cell():
  assert zoo_table.format_cell([0.3891], digits=3) == "0.389"
  assert zoo_table.format_cell([0.1, 0.2, 0.3], digits=3) == "0.200 ± 0.100"  # sample std: 0.1, not 0.0816
  assert zoo_table.format_cell([0.1, -1.0], digits=3) == "—"  # COCO's -1: no ground truth in that range
  assert zoo_table.format_cell([0.1, float("nan")], digits=3) == "—"
  assert zoo_table.format_cell([], digits=3) == "—"
  with pytest.raises(ValueError):
    zoo_table.mean_and_spread([])


def test_table_holds_the_means_and_spreads_of_the_runs():
  rng = np.random.default_rng(0)
  a = [result(s, rng) for s in range(3)]
  b = [result(0, rng, interrupted=True, machines=["other"]), result(1, rng)]
  table = zoo_table.markdown_table([("a", a), ("b", b), ("empty", [])])
  columns = header(table)
  assert columns[:8] == ["row", "AP (test)", "AP50", "AP75", "APs", "APm", "APl", "AR100"]
  assert "`empty`" not in table  # a row without finished runs is left out
  for name, runs in (("a", a), ("b", b)):
    row = dict(zip(columns, cells(table, name)))
    for key in ("AP50", "AP75", "APs", "APm", "APl", "AR100"):
      values = [r["test"][key] for r in runs]
      assert row[key] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    values = [r["test"]["AP"] for r in runs]
    assert row["AP (test)"] == f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"
    minutes = [r["train_seconds"] / 60 for r in runs]
    assert row["train min"] == f"{np.mean(minutes):.1f} ± {np.std(minutes, ddof=1):.1f}"
    assert row["train images"] == "54.4k"
  assert dict(zip(columns, cells(table, "a")))["seeds"] == "3"
  assert dict(zip(columns, cells(table, "b")))["seeds"] == "2*"  # one run was interrupted and resumed
  assert dict(zip(columns, cells(table, "b")))["machine"] == "AMD EPYC, 2 cores, CPU, jax 0.10.2; other"
  numbers = zoo_table.aggregate(a)
  assert numbers["val/AP"]["mean"] == pytest.approx(np.mean([r["val_AP"] for r in a]))
  assert numbers["seeds"] == [0, 1, 2]


def test_undefined_metrics_have_no_mean():
  rng = np.random.default_rng(1)
  runs = [result(s, rng) for s in range(2)]
  for r in runs:
    r["test"]["APl"] = -1.0
  table = zoo_table.markdown_table([("a", runs)])
  assert dict(zip(header(table), cells(table, "a")))["APl"] == "—"
  assert zoo_table.aggregate(runs)["test/APl"]["mean"] is None


README = """# title

text before
<!-- zoo:results:begin -->
old table
<!-- zoo:results:end -->
text after
"""


def test_replace_block_changes_only_the_block():
  new = zoo_table.replace_block(README, "| a | b |\n")
  assert new == README.replace("old table", "| a | b |")
  assert zoo_table.replace_block(new, "| a | b |") == new  # idempotent
  for broken in (README.replace(zoo_table.BEGIN, ""), README + zoo_table.END,
                 "x\n" + zoo_table.END + "\n" + zoo_table.BEGIN + "\n"):
    with pytest.raises(ValueError):
      zoo_table.replace_block(broken, "table")


def test_named_blocks_are_replaced_apart():
  begin, end = zoo_table.markers("zoo:yolo")
  assert (begin, end) == ("<!-- zoo:yolo:begin -->", "<!-- zoo:yolo:end -->")
  text = README + f"{begin}\nold yolo\n{end}\n"
  new = zoo_table.replace_block(text, "yolo table", begin=begin, end=end)
  assert new == text.replace("old yolo", "yolo table")  # the zoo:results block is untouched
  assert zoo_table.replace_block(new, "zoo table") == new.replace("old table", "zoo table")


def test_the_readme_has_the_zoo_markers():
  with open(zoo_rows.ROOT + "/README.md") as f:
    text = f.read()
  for block in ("zoo:results", "zoo:yolo"):
    begin, end = zoo_table.markers(block)
    zoo_table.replace_block(text, "table", begin=begin, end=end)


def test_rows_parse_names_configs_and_overrides():
  rows = zoo_rows.parse_rows("centernet_shapes,small=centernet_shapes:model.width=8:model.neck_features=(32,16,16),"
                             "gs=centernet_shapes:data.data_dir=gs://bucket/tfds:data.root='a,b'")
  assert [r.name for r in rows] == ["centernet_shapes", "small", "gs"]
  assert rows[0].overrides == () and rows[0].config.endswith("experiments/configs/centernet_shapes.py")
  assert rows[1].overrides == ("model.width=8", "model.neck_features=(32,16,16)")
  assert rows[2].overrides == ("data.data_dir=gs://bucket/tfds", "data.root=a,b")
  assert rows[1].flags()[1:] == ["--config.model.width=8", "--config.model.neck_features=(32,16,16)"]
  assert rows[1].spec() == "small=centernet_shapes:model.width=8:model.neck_features=(32,16,16)"
  assert zoo_rows.parse_rows(rows[1].spec()) == [rows[1]]  # a spec reads back as the same row
  assert zoo_rows.parse_overrides("data.shapes_config=tiny, model.neck_features=(1,2)") == (
      "data.shapes_config=tiny", "model.neck_features=(1,2)")


@pytest.mark.parametrize("text, message", [
    ("centernet_shapes:model.width=8", "needs a name"),
    ("no_such_config", "no config file"),
    ("a b=centernet_shapes", "must be letters"),
    ("centernet_shapes,centernet_shapes", "more than once"),
    ("x=centernet_shapes:seed=3", "sets seed"),
    ("x=centernet_shapes:model.neck_features=(1,2", "unclosed"),
    ("", "names no row"),
])
def test_bad_rows_are_named(text, message):
  with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
    zoo_rows.parse_rows(text)


def test_bad_shared_overrides_are_named():
  for text in ("tiny", "seed=1"):
    with pytest.raises(ValueError, match="config_overrides"):
      zoo_rows.parse_overrides(text)


def test_log_records_go_to_the_file_and_only_warnings_to_the_console(tmp_path, capsys):
  from experiments import logs
  root = logging.getLogger()
  console = logging.StreamHandler()  # stderr, as absl's handler under app.run
  root.addHandler(console)
  level = root.level
  root.setLevel(logging.INFO)  # as app.run leaves it
  try:
    logs.quiet_console("warning")
    logging.getLogger("orbax").info("before the work directory is known")
    path = logs.log_to_file(tmp_path)
    logging.getLogger("orbax").info("saved checkpoint 7")
    logging.getLogger("jax").warning("a warning")
    logs.log_to_file(tmp_path / "second")  # a second call moves the file
    logging.getLogger("orbax").info("in the second file")
  finally:
    for handler in list(root.handlers):
      if handler is console or handler.get_name() in ("jaxdet-log-file", "jaxdet-log-buffer"):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
  text = open(path).read()
  assert "before the work directory is known" in text and "saved checkpoint 7" in text and "a warning" in text
  assert "in the second file" not in text and "in the second file" in open(tmp_path / "second" / "log.txt").read()
  assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} I .*saved checkpoint 7$", text, re.M)  # timestamped
  err = capsys.readouterr().err
  assert "a warning" in err and "saved checkpoint" not in err and "before the work" not in err


def test_zoo_writes_the_named_readme_block_only(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("# x\n<!-- zoo:results:begin -->\nA\n<!-- zoo:results:end -->\n"
                    "<!-- zoo:yolo:begin -->\nB\n<!-- zoo:yolo:end -->\n")
  result = subprocess.run(
      [sys.executable, os.path.join(zoo_rows.ROOT, "experiments", "zoo.py"), "--configs=yolov2_shapes", "--seeds=1",
       f"--workdir={tmp_path / 'runs'}", "--table_only", "--write_readme", f"--readme={readme}",
       "--readme_block=zoo:yolo"], cwd=zoo_rows.ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  text = readme.read_text()
  assert "\nA\n" in text and "\nB\n" not in text  # only the named block changed
  yolo = text[text.index("<!-- zoo:yolo:begin -->"):]
  assert "Rows: `yolov2_shapes` = `experiments/configs/yolov2_shapes.py`." in yolo
