"""The machine a run uses, as recorded beside its results: CPU model and cores, JAX backend and devices, versions."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Mapping


def cpu_model() -> str:
  """Returns the CPU's model name (Linux `/proc/cpuinfo`, else `platform.processor()`), e.g. "AMD EPYC 7B13"."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown CPU"


def describe() -> dict[str, Any]:
  """Returns the machine as a dict: `cpu`, `cores`, `backend`, `device_kind`, `devices`, `processes`, versions,
  `glibc_tunables` (the malloc settings: jaxdet/host_memory.py) and `xla_options` (jaxdet/xla_cpu.py's compiler
  options for the run's steps, "" for XLA's defaults).

  Initialises JAX's backend: call it where the run's own computation happens, not in a parent process.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  from jaxdet import xla_cpu  # pylint: disable=g-import-not-at-top
  options = xla_cpu.compiler_options()
  return {"cpu": cpu_model(), "cores": xla_cpu.usable_cpus(), "backend": jax.default_backend(),
          "device_kind": jax.devices()[0].device_kind, "devices": jax.device_count(),
          "processes": jax.process_count(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "python": platform.python_version(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "xla_options": " ".join(f"{k}={v}" for k, v in (options or {}).items())}


def summary(machine: Mapping[str, Any]) -> str:
  """Returns one line for a results table: "AMD EPYC, 2 cores, CPU, jax 0.10.2" or "1× NVIDIA H200 (gpu), ..."."""
  host = f"{machine['cpu']}, {machine['cores']} cores"
  if machine["backend"] == "cpu":
    return f"{host}, CPU, jax {machine['jax']}"
  return f"{machine['devices']}× {machine['device_kind']} ({machine['backend']}), host {host}, jax {machine['jax']}"


def record(directory: str | os.PathLike[str]) -> dict[str, Any]:
  """Returns `describe()` after appending it, with the time, as one line of `directory/machine.jsonl`."""
  machine = describe()
  with open(os.path.join(directory, "machine.jsonl"), "a") as f:
    f.write(json.dumps({"time": time.time(), **machine}) + "\n")
  return machine


def read(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Returns the machines recorded in `directory/machine.jsonl`, one per start of train.py, oldest first."""
  path = os.path.join(directory, "machine.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
