"""Evaluates a checkpoint of --workdir on a split: the COCO table, DIR/eval_<split>.json, the results json, PR curves,
and a record in DIR/metrics.jsonl (keys `eval_<split>/AP`, ...).

  python experiments/eval.py --config=experiments/configs/centernet_shapes.py --workdir=runs/centernet_shapes \
      [--split=test] [--checkpoint=latest|best|STEP] [--config.flip_test=True] [--log_level=info]

The console shows the progress bar, the table, warnings and errors; INFO records go to WORKDIR/log.txt
(`--log_level=info` shows them too).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments import flags as jflags  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.evaluate import evaluate_split, make_predict_fn, write_evaluation  # noqa: E402
from jaxdet.train.loop import build_model, restore_variables  # noqa: E402
from jaxdet.train.parallel import make_mesh, replicate  # noqa: E402
from jaxdet.train.writers import MetricWriter  # noqa: E402

SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split).")
CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best (by validation AP), or a step number.")


def main(argv):
  del argv
  jflags.initialize()
  config, workdir = jflags.CONFIG.value, jflags.WORKDIR.value
  split = SPLIT.value or config.data.eval_split
  source = inputs.build_source(config, split)
  detector = build_model(config, source.num_classes)
  variables, step = restore_variables(config, workdir, detector, which=CHECKPOINT.value)
  mesh = make_mesh()
  evaluator = evaluate_split(make_predict_fn(detector, flip_test=config.flip_test), replicate(variables, mesh),
                             source, inputs.eval_loader(config, source), mesh)
  if jax.process_index() == 0:
    metrics = write_evaluation(evaluator, workdir, split, step=step)
    writer = MetricWriter(workdir)  # appends to metrics.jsonl, as train.py does
    writer.write(step, metrics | {"flip_test": float(config.flip_test)}, prefix=f"eval_{split}/")
    writer.close()
    print(f"checkpoint step {step}, split {split}{' (flip test)' if config.flip_test else ''}:")
    print(evaluator.summary())
    print(f"wrote {os.path.join(workdir, f'eval_{split}.json')}, results_{split}.json and pr_{split}.png")


if __name__ == "__main__":
  app.run(main)
