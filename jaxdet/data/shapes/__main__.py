"""Generates the `shapes` set and optionally exports it as a COCO-format folder.

  python -m jaxdet.data.shapes --config=default --export=DIR [--data_dir=DIR] [--splits=train,validation,test]

writes `DIR/annotations/instances_<split>.json` and `DIR/images/<split>/<image_id>.png` for each split, which any
COCO tool (pycocotools included) reads; the tfds copy stays in the data dir (default `$JAXDET_DATA_DIR` or
`~/tensorflow_datasets`).
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

from jaxdet.data.coco import export_coco
from jaxdet.data.shapes.builder import CONFIGS, SPLITS
from jaxdet.data.shapes.source import ShapesSource, default_data_dir, prepare_shapes


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m jaxdet.data.shapes", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="default", choices=[c.name for c in CONFIGS])
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default $JAXDET_DATA_DIR or "
                      "~/tensorflow_datasets)")
  parser.add_argument("--export", default=None, metavar="DIR", help="also write a COCO-format folder here")
  parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits to export")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  builder = prepare_shapes(config=args.config, data_dir=args.data_dir)
  print(f"shapes/{args.config}: {dict((s, builder.info.splits[s].num_examples) for s in SPLITS)} in "
        f"{builder.data_dir} ({time.perf_counter() - start:.1f} s)")
  if args.export:
    for split in args.splits.split(","):
      source = ShapesSource(split, config=args.config, data_dir=default_data_dir(args.data_dir))
      path = export_coco(source, args.export, split_name=split)
      print(f"exported {len(source)} images of {split} to {path}")


if __name__ == "__main__":
  main()
