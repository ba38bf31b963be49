"""XLA:CPU compiler options for jaxdet's compiled steps: which operations YNNPACK runs, chosen by the threads at hand.

XLA:CPU hands some operations to YNNPACK as library fusions (`--xla_cpu_experimental_ynn_fusion_type`; by default
reductions, single convolutions and single dot products) and the rest to its own kernels and Eigen. In the jaxlib
jaxdet is measured with (0.10.2, docs/benchmarks.md), a YNNPACK fusion runs on the calling thread only: a 3x3
convolution of 32 channels on a `[16, 32, 32, 32]` batch takes 1.48 ms on one core and 1.64 ms on two, where Eigen's
takes 2.06 ms and 1.05 ms. With one core YNNPACK is the faster choice; with two or more, Eigen's threaded
convolutions and products are, while YNNPACK's reductions still beat XLA's own single-threaded loops (the CenterNet
train step on two cores: 213.6 images/s without any YNNPACK fusion, 260.1 with the default set, 304.0 with the
reductions alone, best rounds of one A/B run).

`compiler_options()` returns the options for `jax.jit` on this process: None (XLA's defaults) off the CPU, on one
core, when `XLA_FLAGS` chooses the YNNPACK fusions itself, when `JAXDET_XLA_CPU=default`, or when this jaxlib does
not know the option; otherwise YNNPACK keeps the reductions only. `jit` is `jax.jit` with those options; the train
loop, evaluation and the train-step benchmark compile through it. The options change which kernel computes an
operation, not what it computes: results agree to float rounding (tests/test_xla_cpu.py).
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable

import jax

YNN_FUSION_TYPES = "xla_cpu_experimental_ynn_fusion_type"
MULTI_THREAD_YNN = ("LIBRARY_FUSION_TYPE_REDUCE",)  # what YNNPACK keeps when XLA:CPU has threads to spread over


def usable_cpus() -> int:
  """The CPUs this process may run on (its affinity mask), the size of XLA:CPU's intra-op thread pool."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def skip_reason(backend: str | None = None, cpus: int | None = None) -> str | None:
  """Why `compiler_options` would keep XLA's defaults, or None when it would choose the YNNPACK fusions."""
  if os.environ.get("JAXDET_XLA_CPU", "").lower() == "default":
    return "JAXDET_XLA_CPU=default"
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu":
    return f"backend is {backend}"
  if YNN_FUSION_TYPES in os.environ.get("XLA_FLAGS", ""):
    return f"XLA_FLAGS sets {YNN_FUSION_TYPES}"
  cpus = usable_cpus() if cpus is None else cpus
  if cpus < 2:
    return "one CPU: YNNPACK's single-threaded kernels are the faster ones"
  if not _jit_takes_options():
    return f"jax {jax.__version__}'s jit takes no compiler_options"
  if not _option_known():
    return f"this jaxlib has no {YNN_FUSION_TYPES}"
  return None


def compiler_options(backend: str | None = None, cpus: int | None = None) -> dict[str, str] | None:
  """Returns the XLA compiler options for a jaxdet step on `backend` with `cpus` threads, None for XLA's defaults."""
  if skip_reason(backend, cpus) is not None:
    return None
  return {YNN_FUSION_TYPES: ",".join(MULTI_THREAD_YNN)}


def jit(fun: Callable[..., Any], **kwargs: Any) -> Any:
  """`jax.jit(fun, **kwargs)` compiled with `compiler_options()` (decided now, for the default backend)."""
  options = compiler_options()
  if options is not None:
    kwargs["compiler_options"] = options
  return jax.jit(fun, **kwargs)


@functools.cache
def _jit_takes_options() -> bool:
  return "compiler_options" in inspect.signature(jax.jit).parameters


@functools.cache
def _option_known() -> bool:
  """Whether XLA:CPU accepts the option (compiles a one-element function with it once per process)."""
  options = {YNN_FUSION_TYPES: ",".join(MULTI_THREAD_YNN)}
  try:
    jax.jit(lambda x: x + 1).lower(jax.ShapeDtypeStruct((), "float32")).compile(compiler_options=options)
  except Exception:  # pylint: disable=broad-except  (XlaRuntimeError / JaxRuntimeError by version: unknown option)
    return False
  return True
