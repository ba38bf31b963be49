"""Flags shared by train.py, eval.py and predict.py: the config file, the work directory, multi-host set-up."""

from __future__ import annotations

import os
import time

import jax
from absl import flags, logging
from ml_collections import config_flags

from experiments import logs

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/NAME.py).",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                "Join a multi-host run that jax.distributed detects by itself (SLURM, Open MPI, "
                                "Cloud TPU, ...), without --coordinator_address.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                  "host:port of process 0, for multi-host runs (jax.distributed).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize() -> str:
  """Returns the log file, after quieting the console, joining a multi-host run if asked, and opening the file.

  The console keeps warnings and errors (`--log_level` lowers that); INFO records go to WORKDIR/log.txt
  (see experiments/logs.py).
  """
  logs.quiet_console()
  initialize_distributed()
  return logs.log_to_file(WORKDIR.value, process_index=jax.process_index())


def save_config(config, workdir: str) -> str:
  """Returns the path the run's config went to: WORKDIR/config.json, or beside it when a resumed run's config
  differs from the first one's (the first is kept). Call on process 0."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      if f.read() != config.to_json(indent=1):
        path = os.path.join(workdir, f"config_{int(time.time())}.json")
        logging.warning("the config differs from %s/config.json; writing it to %s", workdir, path)
  with open(path, "w") as f:
    f.write(config.to_json(indent=1))
  return path


def initialize_distributed() -> None:
  """Joins the multi-host run given by --coordinator_address (or detected, with --distributed); else nothing.

  Without either flag a process runs alone, even on a cluster: every process would be process 0 of 1.
  """
  if COORDINATOR.value or DISTRIBUTED.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(coordinator_address=COORDINATOR.value, num_processes=NUM_PROCESSES.value,
                               process_id=PROCESS_ID.value)
