"""Writes the peer table: each torchvision peer's test AP beside jaxdet's row of the same config, and the verdict.

The protocol's rule: jaxdet's row must not be below its peer beyond the seed spread, i.e.
`jaxdet mean AP >= peer mean AP - spread`, where the spread is the larger of the two sample standard deviations over
seeds (a side with one seed contributes none; with no spread at all the rule is `jaxdet >= peer`).

Inputs (no torch needed, nothing is trained): the zoo's `WORKDIR/results.json` (jaxdet's rows, written by
`experiments/zoo.py`) and the peer runs `WORKDIR/peers/<config>/seed<k>/{eval_test.json,train_summary.json}`
written by `experiments/peers/<name>.py`. `--write_readme` replaces the block between `<!-- peers:begin -->` and
`<!-- peers:end -->` in README.md.

  python experiments/peers/compare.py --workdir=runs [--write_readme]
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from typing import Any, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402

from experiments import zoo_rows, zoo_table  # noqa: E402

BEGIN = "<!-- peers:begin -->"
END = "<!-- peers:end -->"
METRICS = ("AP", "AP50", "AP75")


def read_peer_runs(peer_dir: str) -> list[dict[str, Any]]:
  """Returns the finished seeds of one peer folder, in seed order: `{"seed", "test", "summary"}`.

  A seed folder without `eval_test.json` is still training (or was interrupted) and is left out; one whose summary
  is missing or unreadable raises ValueError naming the file, rather than entering the table without its time.
  """
  runs = []
  for seed_dir in glob.glob(os.path.join(peer_dir, "seed*")):
    match = re.fullmatch(r"seed(\d+)", os.path.basename(seed_dir))
    test_path = os.path.join(seed_dir, "eval_test.json")
    if not match or not os.path.exists(test_path):
      continue
    summary_path = os.path.join(seed_dir, "train_summary.json")
    try:
      with open(test_path) as f:
        test = json.load(f)
      with open(summary_path) as f:
        summary = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"peer run {seed_dir}: cannot read {e.filename if isinstance(e, OSError) else 'its json'}: "
                       f"{e}") from e
    runs.append({"seed": int(match.group(1)), "test": test, "summary": summary})
  return sorted(runs, key=lambda r: r["seed"])


def verdict(ours: Sequence[float], peer: Sequence[float]) -> tuple[float, float, bool]:
  """Returns (jaxdet mean − peer mean, the spread allowed, whether the protocol's rule holds)."""
  ours_mean, ours_sd = zoo_table.mean_and_spread(ours)
  peer_mean, peer_sd = zoo_table.mean_and_spread(peer)
  spread = max(ours_sd or 0.0, peer_sd or 0.0)
  gap = ours_mean - peer_mean
  return gap, spread, gap >= -spread


def markdown_table(rows: Sequence[tuple[str, Mapping[str, Any], Sequence[Mapping[str, Any]]]]) -> str:
  """Returns the markdown table of `(config, jaxdet's aggregated row, the peer's runs)` tuples."""
  header = ["config", "peer AP (test)", "peer AP50", "peer AP75", "peer min", "peer img/s", "peer seeds",
            "jaxdet AP (test)", "jaxdet seeds", "jaxdet − peer", "within the rule"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for config, ours, peer in rows:
    ours_ap = ours["test/AP"]["values"]
    peer_ap = [r["test"]["AP"] for r in peer]
    gap, spread, holds = verdict(ours_ap, peer_ap)
    threads = sorted({r["summary"].get("threads") for r in peer} - {None})
    cells = [f"`{config}`"]
    cells += [zoo_table.format_cell([r["test"][k] for r in peer], digits=3) for k in METRICS]
    cells.append(zoo_table.format_cell([r["summary"]["wall_seconds"] / 60 for r in peer], digits=1))
    cells.append(zoo_table.format_cell([r["summary"]["images_per_second"] for r in peer], digits=1)
                 + (f" ({'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''})" if threads else ""))
    cells.append(str(len(peer)))
    cells.append(zoo_table.format_cell(ours_ap, digits=3))
    cells.append(str(len(ours_ap)))
    cells.append(f"{gap:+.3f}")
    cells.append(("yes" if holds else "**no**") + f" (spread {spread:.3f})")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def collect(workdir: str) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
  """Returns the table's rows: every config that has both finished peer runs and a jaxdet row in results.json."""
  results_path = os.path.join(workdir, "results.json")
  if not os.path.exists(results_path):
    raise FileNotFoundError(f"{results_path} not found: run experiments/zoo.py (or --table_only) first")
  with open(results_path) as f:
    ours = json.load(f)
  rows = []
  for peer_dir in sorted(glob.glob(os.path.join(workdir, "peers", "*"))):
    config = os.path.basename(peer_dir)
    peer = read_peer_runs(peer_dir)
    if peer and config in ours:
      rows.append((config, ours[config], peer))
  return rows


def block(rows, workdir: str) -> str:
  """Returns the README block: what the peers are, the table, the commands."""
  torch = sorted({r["summary"].get("torch", "?") for _, _, peer in rows for r in peer})
  return "\n".join([
      "Peers: torchvision's detector of the same family built at the size of the jaxdet config (same anchors or "
      "locations, same parameter budget), trained on the same batches in the same order with the same schedule, "
      f"best validation checkpoint scored on test by `jaxdet.eval` (torch {', '.join(torch)}, CPU). The rule: "
      "jaxdet's mean AP ≥ the peer's − the larger seed standard deviation.",
      "", markdown_table(rows), "",
      "Commands: `python experiments/peers/<retinanet|fcos|ssd|faster_rcnn>.py --config=experiments/configs/"
      "<config>.py --config.seed=<k> --threads=1` (in an environment with torchvision, "
      "`experiments/bench/torchvision_cpu_peer.sh`), then "
      f"`python experiments/peers/compare.py --workdir={workdir} --write_readme`.",
  ])


def define_flags() -> None:
  """Defines the command line's flags (only when run as a script: importing this module defines none, so tests can
  import it beside other scripts that define `--workdir`)."""
  flags.DEFINE_string("workdir", "runs", "Folder holding the zoo's results.json and peers/<config>/seed<k>.")
  flags.DEFINE_bool("write_readme", False, "Also replace the peers block of --readme with the table.")
  flags.DEFINE_string("readme", os.path.join(zoo_rows.ROOT, "README.md"), "README holding the peer markers.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  args = flags.FLAGS
  rows = collect(args.workdir)
  if not rows:
    sys.exit(f"no config under {args.workdir}/peers has both finished peer runs and a zoo row")
  text = block(rows, args.workdir)
  print(text)
  if args.write_readme:
    with open(args.readme) as f:
      readme = f.read()
    with open(args.readme, "w") as f:
      f.write(zoo_table.replace_block(readme, text, begin=BEGIN, end=END))


if __name__ == "__main__":
  define_flags()
  app.run(main)
