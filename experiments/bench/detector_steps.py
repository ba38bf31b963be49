"""Benchmark: every detector's jitted train step with jaxdet's layers against the same step with flax.linen's.

  python experiments/bench/detector_steps.py --rounds=5 --steps=5
  python experiments/bench/detector_steps.py --configs=ssd_shapes,yolov2_shapes

For each config in `experiments/configs/` (its model, batch and image size, one batch from its own training loader,
so two-stage detectors get their proposals): the train step compiled as `experiments/train.py` compiles it, once with
`jaxdet.models.layers` (`Conv`, `ConvTranspose`, `max_pool`: the CPU remedies of issue 13) and once with
flax.linen's layers in their place (`jaxdet.models.layers.flax_layers`), from the same variables. It checks that
both variants hold the same parameters and prints how far their first steps' metrics (loss terms, gradient norm)
differ (float rounding), then times them in alternating rounds of `--steps` steps and prints the best and median
images/s of each and the time ratio (jaxdet / flax: below 1 is faster). The steps train on the one batch again and
again: the data pipeline is not timed. A detector that alters some steps' batches (YOLOv4's self-adversarial
training) is timed on its plain steps.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import platform
import statistics
import sys

from absl import app, flags
import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxdet import host_memory, xla_cpu  # noqa: E402
from jaxdet.models.layers import flax_layers  # noqa: E402
from jaxdet.train import inputs  # noqa: E402
from jaxdet.train.loop import MODEL_KEYS, build_model  # noqa: E402
from jaxdet.train.optim import make_optimizer  # noqa: E402
from jaxdet.train.state import create_train_state, train_step  # noqa: E402
from timing import step_runner  # noqa: E402

PROTOCOL_CONFIGS = ("centernet_shapes", "fast_rcnn_shapes", "faster_rcnn_shapes", "faster_rcnn_fpn_shapes",
                    "retinanet_shapes", "fcos_shapes", "ssd_shapes", "yolov1_shapes", "yolov2_shapes",
                    "yolov3_shapes", "yolov4_shapes")

_CONFIGS = flags.DEFINE_list("configs", list(PROTOCOL_CONFIGS), "config names in experiments/configs/")
_STEPS = flags.DEFINE_integer("steps", 5, "steps per timed round")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "timed rounds of each variant, interleaved")


def load_config(name: str):
  """Returns `experiments/configs/<name>.py`'s `get_config()`."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def first_batch(config, source, fields) -> dict[str, np.ndarray]:
  """One batch of `config`'s training loader (its augmentation, its batch size), the fields the step reads."""
  batch = next(iter(inputs.train_loader(config, source)))
  return {k: batch[k] for k in fields}


def compiled_step(config, detector, batch, *, flax: bool):
  """Returns `(run(n) -> seconds for n steps, first step's metrics, params)`: the train step as train.py's loop
  compiles it (`jaxdet.xla_cpu.jit`), built and traced with jaxdet's layers or, when `flax`, with flax.linen's."""
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  image_shape = (config.data.image_size,) * 2 if isinstance(config.data.image_size, int) else config.data.image_size
  with flax_layers() if flax else contextlib.nullcontext():
    state = create_train_state(detector, tx, image_shape=tuple(image_shape), seed=config.seed)
    step = xla_cpu.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=schedule, alter=False),
                       donate_argnums=0)
    compiled = step.lower(state, batch).compile()
  params = jax.device_get(state.params)
  state, first = compiled(state, batch)
  return step_runner(compiled, state, batch), jax.device_get(first), params


def main(argv):
  del argv
  jax.config.update("jax_platforms", "cpu")
  cpus = f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs"
  print(f"{platform.processor() or platform.machine()}, {cpus}, jax {jax.__version__}; XLA options "
        f"{xla_cpu.compiler_options() or 'defaults (' + str(xla_cpu.skip_reason()) + ')'}; "
        f"{_STEPS.value} steps x {_ROUNDS.value} rounds per variant")
  print(f"\n{'config':<24} {'batch':>5} {'size':>7}  {'jaxdet img/s best/median':>25}  {'flax img/s best/median':>23}"
        f"  {'time ratio (best)':>17}  first step's metrics: largest relative difference")
  for name in _CONFIGS.value:
    config = load_config(name)
    source = inputs.build_source(config, config.data.train_split)
    detector = build_model(config, source.num_classes)
    batch = jax.device_put(first_batch(config, source, (*MODEL_KEYS, *detector.inputs)))
    ours, ours_first, ours_params = compiled_step(config, detector, batch, flax=False)
    theirs, theirs_first, theirs_params = compiled_step(config, detector, batch, flax=True)
    if jax.tree.structure(ours_params) != jax.tree.structure(theirs_params) or any(
        a.shape != b.shape or not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(ours_params), jax.tree.leaves(theirs_params))):
      raise AssertionError(f"{name}: the two variants' initial parameters differ")
    difference = max(abs(float(ours_first[k]) - float(theirs_first[k])) / max(abs(float(theirs_first[k])), 1e-12)
                     for k in theirs_first if k != "finite")
    ours(1), theirs(1)  # warm
    rates = {"jaxdet": [], "flax": []}
    for _ in range(_ROUNDS.value):
      for variant, run in (("jaxdet", ours), ("flax", theirs)):
        rates[variant].append(batch["image"].shape[0] * _STEPS.value / run(_STEPS.value))
    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    size = "x".join(map(str, batch["image"].shape[1:3]))  # the batch's own (multi-scale configs draw one per batch)
    print(f"{name:<24} {batch['image'].shape[0]:>5} {size:>7}  {best['jaxdet']:>12.1f} / {med['jaxdet']:<10.1f}  "
          f"{best['flax']:>10.1f} / {med['flax']:<10.1f}  {best['flax'] / best['jaxdet']:>17.2f}"
          f"  {difference:.1e}", flush=True)


if __name__ == "__main__":
  host_memory.use_huge_pages()  # as experiments/train.py
  app.run(main)
