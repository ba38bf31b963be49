"""Runs Faster R-CNN's 4-step alternating training (Ren et al. 2015, sec. 3.2): four train.py runs in sequence,
each starting from the previous one's latest checkpoint; resumes where it stopped (a finished step is skipped).

  python experiments/four_step.py --config=experiments/configs/faster_rcnn_4step_shapes.py[:1,fpn] --workdir=DIR \\
      [--config.seed=1 --config.data.shapes_config=tiny ...]

(`faster_rcnn_fpn_4step_shapes.py` is the ",fpn" variant under a name of its own, for the zoo's rows.)

Steps go to DIR/step1 ... DIR/step4; DIR/step4 holds the final detector. When step 4 is done, DIR itself looks
like a finished train.py run of the given config — `DIR/checkpoints` links to step 4's, `DIR/metrics.jsonl` holds
the four steps' records in order, `DIR/config.json` the given config — so `eval.py` / `predict.py` and the zoo
(`config.train_script = "four_step"`) use it as any run: the network is the same in every step at inference (the
stage only changes what trains). Overrides on the command line apply to every step: the script takes the fields
where the given config differs from the config file's own step 1 and sets them in each step's config.
`init_from.workdir` is filled in.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import flags as jflags  # noqa: E402
from experiments import machine  # noqa: E402
from jaxdet.train.checkpoint import Checkpointer  # noqa: E402
from jaxdet.train.loop import train_and_evaluate  # noqa: E402


def _leaves(config, prefix=""):
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _set(config, dotted, value):
  *path, last = dotted.split(".")
  for key in path:
    config = config[key]
  config[last] = value


def step_configs(config_path: str, given) -> list:
  """Returns the four steps' configs: the file's configs with the fields where `given` differs from step 1's."""
  path, _, arg = config_path.partition(":")
  spec = importlib.util.spec_from_file_location("four_step_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  variant = "," + arg.split(",", 1)[1] if "," in arg else ""
  defaults = dict(_leaves(module.get_config("1" + variant)))
  overrides = {k: v for k, v in _leaves(given) if k in defaults and defaults[k] != v and k != "init_from.workdir"}
  configs = []
  for step in range(1, 5):
    config = module.get_config(f"{step}{variant}")
    for key, value in overrides.items():
      _set(config, key, value)
    configs.append(config)
  return configs


def _finished(workdir: str, total_steps: int) -> bool:
  if not os.path.exists(os.path.join(workdir, "checkpoints")):
    return False
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  done = checkpointer.latest_step() == total_steps
  checkpointer.close()
  return done


def publish(workdir: str) -> None:
  """Makes WORKDIR look like a finished train.py run of the final detector (see the module docstring)."""
  link = os.path.join(workdir, "checkpoints")
  if os.path.islink(link):
    os.remove(link)
  os.symlink(os.path.join("step4", "checkpoints"), link)
  with open(os.path.join(workdir, "metrics.jsonl.tmp"), "w") as out:
    for step in range(1, 5):
      with open(os.path.join(workdir, f"step{step}", "metrics.jsonl")) as f:
        out.write(f.read())
  os.replace(os.path.join(workdir, "metrics.jsonl.tmp"), os.path.join(workdir, "metrics.jsonl"))


def main(argv):
  del argv
  jflags.initialize()
  workdir = jflags.WORKDIR.value
  given = jflags.CONFIG.value
  configs = step_configs(flags.FLAGS["config"].config_filename, given)
  if jax.process_index() == 0:
    jflags.save_config(given, workdir)
    machine.record(workdir)
  for step, config in enumerate(configs, start=1):
    step_dir = os.path.join(workdir, f"step{step}")
    if step > 1:
      config.init_from.workdir = os.path.join(workdir, f"step{step - 1}")
    if _finished(step_dir, config.total_steps):
      print(f"step {step}: finished in {step_dir}")
      continue
    print(f"step {step} of 4 ({config.model.stage}{', separate proposer' if config.model.separate_proposer else ''}"
          f"{', frozen ' + ' '.join(config.optim.frozen) if config.optim.frozen else ''}) -> {step_dir}")
    if jax.process_index() == 0:
      jflags.save_config(config, step_dir)
    metrics = train_and_evaluate(config, step_dir)
    print(json.dumps({"step": step} | {k: round(v, 4) for k, v in metrics.items()}))
  if jax.process_index() == 0:
    publish(workdir)


if __name__ == "__main__":
  _ = config_flags  # the --config flag is defined in experiments/flags.py
  app.run(main)
