"""Keeps XLA:CPU's per-step scratch memory mapped between steps (glibc's malloc), set when jaxdet is imported.

XLA:CPU allocates one scratch buffer per execution of a compiled computation (the CenterNet shapes train step:
82 MB) and frees it at the end. glibc's malloc serves a block that large with `mmap` and returns it with `munmap`,
so every step faults the whole buffer in again, one zeroed 4 KiB page at a time: 20,000 page faults and a quarter of
the CenterNet train step's wall time on a CPU (docs/benchmarks.md, "Train step against PyTorch"). Three `mallopt`
settings keep that memory in the process instead:

- `M_ARENA_MAX = 1`: every thread allocates from the main arena, which grows with `brk` (a secondary arena is a
  64 MB heap, and a larger block in one falls back to `mmap` whatever the other settings say);
- `M_MMAP_MAX = 0`: no block is served by `mmap`;
- `M_TRIM_THRESHOLD = 2 GiB`: freed memory at the top of the heap is not handed back to the system.

The price is the usual one of these settings: the process keeps the memory of its largest steps (the resident size
stays at its peak), and threads that allocate at the same time share one arena's lock. The arena setting only applies
to threads that have not allocated yet, so it must run before jax starts its backend: `import jaxdet` does it then,
and skips (saying why in `STATE`) when a backend is already running, when the C library is not glibc, when an
accelerator plugin is installed (its host does little per-step allocation, and has many threads), or when the
environment sets `JAXDET_HOST_MALLOC=default`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import platform
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # <malloc.h>
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")

# What `configure` did: "set", or why it left malloc alone.
STATE = "not configured"


def _backend_running() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None))


def _skip_reason() -> str | None:
  if os.environ.get("JAXDET_HOST_MALLOC", "").lower() == "default":
    return "skipped: JAXDET_HOST_MALLOC=default"
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return f"skipped: not glibc ({platform.system()}, {platform.libc_ver()[0] or 'unknown libc'})"
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if not platforms.startswith("cpu"):
    for name in _ACCELERATOR_PLUGINS:
      try:
        if importlib.util.find_spec(name) is not None:
          return f"skipped: accelerator plugin {name} installed (set JAX_PLATFORMS=cpu to tune the CPU host)"
      except (ImportError, ValueError):
        continue
  if _backend_running():
    return "skipped: a jax backend was already running (import jaxdet before using jax)"
  return None


def configure() -> str:
  """Applies the module docstring's malloc settings unless a skip condition holds; returns and records `STATE`."""
  global STATE
  reason = _skip_reason()
  if reason is not None:
    STATE = reason
    return STATE
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  ok = all(libc.mallopt(option, value) == 1 for option, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
  STATE = "set" if ok else "failed: mallopt refused a setting"
  return STATE
