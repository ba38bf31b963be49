"""The peer table (experiments/peers/compare.py): the protocol's rule against hand-computed cases, the table's cells,
unfinished and unreadable peer runs, and the README block. Needs no torch."""

import json
import os

import numpy as np
import pytest

from experiments import zoo_table
from experiments.peers import compare


def write_peer(root, config, seed, ap, *, summary=True, finished=True):
  run = os.path.join(root, "peers", config, f"seed{seed}")
  os.makedirs(run, exist_ok=True)
  if finished:
    with open(os.path.join(run, "eval_test.json"), "w") as f:
      json.dump({"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.1}, f)
  if summary:
    with open(os.path.join(run, "train_summary.json"), "w") as f:
      json.dump({"wall_seconds": 1200.0 + seed * 60, "images_per_second": 40.0, "threads": 1, "torch": "2.x"}, f)


def write_ours(root, rows):
  results = {}
  for config, values in rows.items():
    mean, spread = zoo_table.mean_and_spread(values)
    results[config] = {"test/AP": {"mean": mean, "spread": spread, "values": values}}
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(results, f)


@pytest.mark.parametrize("ours, peer, holds", [
    ([0.50, 0.52], [0.50], True),           # above
    ([0.48, 0.50], [0.50], True),           # 0.01 below, sd 0.0141
    ([0.47, 0.48], [0.50], False),          # 0.025 below, sd 0.0071
    ([0.47, 0.48], [0.45, 0.55], True),     # the peer's own spread (0.0707) counts
    ([0.49], [0.50], False),                # no spread on either side: jaxdet must not be below
])
def test_verdict_is_the_protocols_rule(ours, peer, holds):
  gap, spread, ok = compare.verdict(ours, peer)
  assert gap == pytest.approx(np.mean(ours) - np.mean(peer))
  expected_spread = max([np.std(v, ddof=1) for v in (ours, peer) if len(v) > 1], default=0.0)
  assert spread == pytest.approx(expected_spread)
  assert ok is holds


def test_table_rows_and_cells(tmp_path):
  root = str(tmp_path)
  write_ours(root, {"retinanet_shapes": [0.44, 0.46], "fcos_shapes": [0.60, 0.62], "ssd_shapes": [0.3, 0.3]})
  write_peer(root, "retinanet_shapes", 0, 0.40)
  write_peer(root, "retinanet_shapes", 1, 0.42)
  write_peer(root, "fcos_shapes", 0, 0.70)
  write_peer(root, "fcos_shapes", 1, 0.0, finished=False)   # still training: not in the table
  write_peer(root, "yolov9_shapes", 0, 0.9)                  # no jaxdet row: not in the table
  rows = compare.collect(root)
  assert [r[0] for r in rows] == ["fcos_shapes", "retinanet_shapes"]
  table = compare.markdown_table(rows)
  lines = {l.split("|")[1].strip(): [c.strip() for c in l.strip("|").split("|")] for l in table.splitlines()[2:]}
  retina = lines["`retinanet_shapes`"]
  assert retina[1:4] == ["0.410 ± 0.014", "0.610 ± 0.014", "0.310 ± 0.014"]
  assert retina[4] == "20.5 ± 0.7" and retina[6] == "2"
  assert retina[7] == "0.450 ± 0.014" and retina[9] == "+0.040" and retina[10].startswith("yes")
  fcos = lines["`fcos_shapes`"]
  assert fcos[6] == "1" and fcos[9] == "-0.090" and fcos[10].startswith("**no**")


def test_unreadable_summary_names_the_run(tmp_path):
  root = str(tmp_path)
  write_ours(root, {"ssd_shapes": [0.3, 0.31]})
  write_peer(root, "ssd_shapes", 0, 0.3, summary=False)
  with pytest.raises(ValueError, match=r"peers/ssd_shapes/seed0"):
    compare.collect(root)


def test_missing_results_json_says_what_to_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="zoo.py"):
    compare.collect(str(tmp_path))


def test_block_replaces_only_the_marked_part(tmp_path):
  root = str(tmp_path)
  write_ours(root, {"ssd_shapes": [0.3, 0.32]})
  write_peer(root, "ssd_shapes", 0, 0.29)
  text = compare.block(compare.collect(root), "runs")
  readme = f"before\n{compare.BEGIN}\nold table\n{compare.END}\nafter\n"
  out = zoo_table.replace_block(readme, text, begin=compare.BEGIN, end=compare.END)
  assert out.startswith("before\n") and out.endswith(f"{compare.END}\nafter\n")
  assert "old table" not in out and "`ssd_shapes`" in out and "--workdir=runs" in out
