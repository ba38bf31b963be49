"""Transparent huge pages for glibc's large blocks, so XLA:CPU's per-step scratch memory is cheap to fault in.

XLA:CPU allocates one scratch buffer per execution of a compiled computation (the CenterNet shapes train step:
82 MB) and frees it at the end. glibc's malloc serves a block that large with `mmap` and returns it with `munmap`,
so every step faults the whole buffer in again, one zeroed 4 KiB page at a time: 20,000 page faults, about 30 ms of
kernel time in a 120 ms step on a CPU (docs/benchmarks.md, "Train step against PyTorch"). With glibc's tunable
`glibc.malloc.hugetlb=1` (glibc 2.35+), malloc asks for transparent huge pages on the blocks it maps, and the same
buffer faults in as 2 MiB pages: a few hundred faults a step, and the train loop of `experiments/train.py` on two
cores runs about 20% more images a second.

glibc reads tunables once, when the process starts, so `use_huge_pages()` re-executes the program with
`GLIBC_TUNABLES` extended, unless the tunable is already set, the C library is not glibc, the kernel has transparent
huge pages off (`/sys/kernel/mm/transparent_hugepage/enabled` says never), or the environment sets
`JAXDET_HOST_MALLOC=default`. The entry points call it first (`experiments/train.py`, the train-step benchmark);
a script of one's own gets the same by starting with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in its environment.

(Keeping the freed scratch in the process instead, with `mallopt` — one arena, no `mmap`, no trimming — removes
the faults too, but the single arena's lock made the two-core train loop 20-25% slower than glibc's defaults.)
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def skip_reason() -> str | None:
  """Why `use_huge_pages` would leave the process as it is, or None when it would re-execute it."""
  if os.environ.get("JAXDET_HOST_MALLOC", "").lower() == "default":
    return "JAXDET_HOST_MALLOC=default"
  if "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
    return "glibc.malloc.hugetlb is set already"
  libc, version = platform.libc_ver()
  if platform.system() != "Linux" or libc != "glibc":
    return f"not glibc ({platform.system()}, {libc or 'unknown libc'})"
  if tuple(int(v) for v in version.split(".")[:2]) < (2, 35):
    return f"glibc {version} has no glibc.malloc.hugetlb (2.35+)"
  try:
    with open(_THP_SETTING) as f:
      if "[never]" in f.read():
        return "transparent huge pages are off"
  except OSError:
    return f"{_THP_SETTING} is not readable"
  return None


def use_huge_pages() -> None:
  """Re-executes the running program with `GLIBC_TUNABLES` extended by `TUNABLE`, unless `skip_reason()` says why not.

  Call it first thing in a program's `__main__` (before threads start or work is done: the program starts over).
  """
  if skip_reason() is not None:
    return
  tunables = os.environ.get("GLIBC_TUNABLES")
  os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
