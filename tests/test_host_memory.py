"""jaxdet.host_memory: importing jaxdet keeps XLA:CPU's per-execution scratch memory mapped between executions."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# A fresh interpreter (the test process's jax backend is already running): imports jaxdet first, runs a computation
# with 48 MB of scratch (`sin(x)` materialised for the matrix product) again and again, and reports the fewest page
# faults of a run (now and then a run still grows the heap, where small allocations took part of the freed scratch).
_PROBE = """
import json, resource
import jaxdet
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.ones((4096, 8), x.dtype)).sum())
x = jnp.ones((3072, 4096), jnp.float32)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(12):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = min(faults[2:])
print(json.dumps({"state": jaxdet.host_memory.STATE, "faults": faults, "temp": temp}))
"""


def _probe(**env) -> dict:
  environ = {k: v for k, v in os.environ.items() if k not in ("JAXDET_HOST_MALLOC", "XLA_FLAGS")}
  environ.update(JAX_PLATFORMS="cpu", **env)
  result = subprocess.run([sys.executable, "-c", _PROBE], env=environ, capture_output=True, text=True, timeout=300,
                          check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_scratch_memory_is_not_faulted_in_again_each_execution():
  tuned, default = _probe(), _probe(JAXDET_HOST_MALLOC="default")
  assert tuned["temp"] >= 48 * 2**20
  assert tuned["state"] == "set" and default["state"] == "skipped: JAXDET_HOST_MALLOC=default"
  pages = tuned["temp"] // 4096
  assert default["faults"] > pages // 2  # glibc maps and unmaps the scratch every run: the problem is real here
  assert tuned["faults"] < pages // 20  # ... and gone with the settings


def test_skips_when_a_backend_is_running():
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdet import host_memory  # pylint: disable=import-outside-toplevel
  jax.devices()
  saved = host_memory.STATE
  try:
    assert host_memory.configure().startswith("skipped")
  finally:
    host_memory.STATE = saved
