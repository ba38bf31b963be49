"""Benchmark: jaxdet's jitted CenterNet train step against the same network in PyTorch, in one run.

  python experiments/bench/train_step.py --rounds=5 --steps=10

The network is `experiments/configs/centernet_shapes.py`'s (ResNet-18 layout at width 16, deconv neck (64, 32, 32)
with lateral skips, heads of 32 channels; batch 16, 128 x 128) on a synthetic batch with jaxdet's own targets.
The PyTorch copy (`experiments/bench/torch_centernet.py`) has the same layers, parameter count and loss structure
(penalty-reduced focal loss, L1 at the centre cells; Adam after global-norm clipping), so both do the same FLOPs.
Implementations are timed in alternating rounds of `--steps` steps (the machine is shared: interleaving spreads
the noise over all of them); the best round's images/s is reported with the median, and every ratio is
jaxdet's time per step over the peer's.

Both frameworks use the CPUs the process may run on: `taskset -c 0 python ...` compares them on one core, which is
robust on a shared machine (with two threads each, a busy machine stalls PyTorch's OpenMP barriers far more than XLA's
thread pool, and the comparison measures the neighbours). Variants: `jaxdet` (the library as it is, compiled with
`jaxdet.xla_cpu`'s options as the train loop is), `jaxdet-xla-defaults` (the same step with XLA:CPU's default YNNPACK
fusions), `flax-conv` (the same step with flax.linen's `nn.Conv` / `nn.ConvTranspose` patched in for jaxdet's layers,
i.e. the layers before issue 13), `torch-eager` (NCHW), `torch-eager-cl` (channels_last), `torch-compile` (inductor;
skipped with its error when it cannot build). Without torch only the jaxdet variants run. `--device=gpu` runs the same
on the first accelerator (torch on CUDA).
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import sys
import time

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxdet import host_memory, xla_cpu  # noqa: E402
from jaxdet.models.layers import flax_layers  # noqa: E402
from jaxdet.train.loop import build_model  # noqa: E402
from jaxdet.train.optim import make_optimizer  # noqa: E402
from jaxdet.train.state import create_train_state, train_step  # noqa: E402
from timing import step_runner  # noqa: E402

_BATCH = flags.DEFINE_integer("batch_size", 16, "images per step")
_SIZE = flags.DEFINE_integer("image_size", 128, "square image side")
_STEPS = flags.DEFINE_integer("steps", 10, "steps per timed round")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "timed rounds of each variant, interleaved")
_VARIANTS = flags.DEFINE_list(
    "variants", ["jaxdet", "jaxdet-xla-defaults", "flax-conv", "torch-eager", "torch-eager-cl", "torch-compile"],
    "what to time")
_DTYPE = flags.DEFINE_string("dtype", "float32", "compute dtype of the jaxdet model (float32 | bfloat16)")
_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "where both frameworks run")
_CONFIG = "experiments/configs/centernet_shapes.py"


def load_config():
  """Returns the CenterNet shapes config (imported by path, as train.py's --config does)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  spec = importlib.util.spec_from_file_location("centernet_shapes", os.path.join(root, _CONFIG))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def synthetic_batch(batch_size: int, size: int, max_boxes: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch in the loader's format: random pixels, 1-8 random boxes per image (speed does not depend on content)."""
  rng = np.random.default_rng(seed)
  xy = rng.uniform(0, size * 0.7, (batch_size, max_boxes, 2))
  wh = rng.uniform(8, size * 0.3, (batch_size, max_boxes, 2))
  count = rng.integers(1, 9, batch_size)
  return {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
          "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
          "labels": rng.integers(0, 5, (batch_size, max_boxes)).astype(np.int32),
          "valid": np.arange(max_boxes)[None] < count[:, None],
          "crowd": np.zeros((batch_size, max_boxes), bool)}


def jax_step(config, batch, *, flax_convs: bool, xla_defaults: bool = False):
  """Returns `(run(n) -> seconds for n steps, num_params, targets)` for the jitted jaxdet train step.

  The step is compiled with `jaxdet.xla_cpu.compiler_options()`, as the train loop compiles it, or with XLA's
  defaults when `xla_defaults`.
  """
  import contextlib  # pylint: disable=import-outside-toplevel
  detector = build_model(config, num_classes=5)
  tx, schedule = make_optimizer(config.optim, config.total_steps)
  context = flax_layers() if flax_convs else contextlib.nullcontext()
  with context:
    state = create_train_state(detector, tx, image_shape=(_SIZE.value, _SIZE.value), seed=0)
    step = jax.jit(functools.partial(train_step, detector=detector, tx=tx, schedule=schedule), donate_argnums=0)
    batch = jax.device_put(batch)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile(None if xla_defaults else xla_cpu.compiler_options())
  compile_s = time.perf_counter() - start
  run = step_runner(compiled, state, batch)
  run(2)  # warm
  num_params = sum(p.size for p in jax.tree.leaves(state.params))
  targets = jax.device_get(jax.jit(detector.assign)(batch))
  return run, num_params, targets, compile_s


def main(argv):
  del argv
  config = load_config()
  config.model.dtype = _DTYPE.value
  if _DEVICE.value == "cpu":
    jax.config.update("jax_platforms", "cpu")
  batch = synthetic_batch(_BATCH.value, _SIZE.value, config.data.max_boxes)
  cpus = f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs"
  print(f"{platform.processor() or platform.machine()}, {cpus}, {jax.devices()[0].device_kind} "
        f"({jax.devices()[0].platform}), jax {jax.__version__}; batch {_BATCH.value}, {_SIZE.value}^2, "
        f"{_STEPS.value} steps x {_ROUNDS.value} rounds, jaxdet dtype {_DTYPE.value}")
  print(f"jaxdet's XLA options: {xla_cpu.compiler_options() or 'defaults (' + str(xla_cpu.skip_reason()) + ')'}")

  runners, targets = {}, None
  for name in _VARIANTS.value:
    if name in ("jaxdet", "jaxdet-xla-defaults", "flax-conv"):
      run, num_params, targets, compile_s = jax_step(config, batch, flax_convs=name == "flax-conv",
                                                     xla_defaults=name == "jaxdet-xla-defaults")
      runners[name] = run
      print(f"{name}: {num_params:,} parameters, compile {compile_s:.1f} s")
  torch_variants = [v for v in _VARIANTS.value if v.startswith("torch")]
  if torch_variants:
    try:
      import torch  # pylint: disable=import-outside-toplevel
      import torch_centernet  # pylint: disable=import-outside-toplevel
    except ImportError as error:
      print(f"torch unavailable ({error}): timing jaxdet only")
      torch_variants = []
    if torch_variants and targets is None:
      detector = build_model(config, num_classes=5)
      targets = jax.device_get(jax.jit(detector.assign)(batch))
    for name in torch_variants:
      try:
        run, num_params, setup_s = torch_centernet.make_step(
            config, batch, targets, device="cuda" if _DEVICE.value == "gpu" else "cpu",
            channels_last=name != "torch-eager", compile=name == "torch-compile")
      except Exception as error:  # pylint: disable=broad-except
        print(f"{name}: skipped ({type(error).__name__}: {str(error).splitlines()[0][:200]})")
        continue
      runners[name] = run
      print(f"{name}: torch {torch.__version__}, {torch.get_num_threads()} threads, {num_params:,} parameters, "
            f"setup {setup_s:.1f} s")

  rates = {name: [] for name in runners}
  for _ in range(_ROUNDS.value):
    for name, run in runners.items():
      rates[name].append(_BATCH.value * _STEPS.value / run(_STEPS.value))
  best = {name: max(r) for name, r in rates.items()}
  print(f"\n{'variant':<16} {'best img/s':>10} {'median':>8}  time / peer's time (best rounds)")
  peers = [p for p in ("torch-eager", "torch-eager-cl", "torch-compile") if p in best]
  for name, r in rates.items():
    ratios = "  ".join(f"vs {p}: {best[p] / best[name]:.2f}" for p in peers if p != name)
    print(f"{name:<16} {best[name]:>10.1f} {statistics.median(r):>8.1f}  {ratios}")


if __name__ == "__main__":
  host_memory.use_huge_pages()  # as experiments/train.py: both frameworks run with glibc's huge-page tunable
  app.run(main)
