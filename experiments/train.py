"""Trains a detector and evaluates it on the validation split; resumes from the newest checkpoint in --workdir.

  python experiments/train.py --config=experiments/configs/centernet_shapes.py --workdir=runs/centernet_shapes \
      [--config.total_steps=...] [--log_level=info]

The console shows the progress bar, the evaluation tables, warnings and errors; every INFO record of the libraries
(checkpoint saves, data-set info, devices) goes to WORKDIR/log.txt (`--log_level=info` shows them too). The work
directory also gets `config.json` and `machine.jsonl` (the machine of each start: CPU, cores, backend, versions).
On glibc the program first starts over with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, so XLA:CPU's per-step scratch
faults in as huge pages (jaxdet/host_memory.py; `JAXDET_HOST_MALLOC=default` leaves malloc as it is).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdet import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.use_huge_pages()  # starts the program over with glibc's huge-page tunable (jaxdet/host_memory.py)

import jax  # noqa: E402
from absl import app, logging  # noqa: E402

from experiments import flags as jflags  # noqa: E402
from experiments import machine  # noqa: E402
from jaxdet.eval import format_summary  # noqa: E402
from jaxdet.train.loop import train_and_evaluate  # noqa: E402


def main(argv):
  del argv
  log_file = jflags.initialize()
  config, workdir = jflags.CONFIG.value, jflags.WORKDIR.value
  logging.info("devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
  if jax.process_index() == 0:
    jflags.save_config(config, workdir)  # a resumed run keeps the first config, its own beside it if it differs
    logging.info("machine: %s", machine.record(workdir))
  metrics = train_and_evaluate(config, workdir)
  if jax.process_index() == 0:
    print(f"final validation metrics ({config.data.eval_split}):")
    print(format_summary(metrics))
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    print(f"log: {log_file}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
