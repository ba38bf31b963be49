"""jaxdet.host_memory: a program re-executed with glibc's huge-page tunable faults XLA's scratch in as huge pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxdet import host_memory

# A fresh program: asks for huge pages first (re-executing itself), then runs a computation with 48 MB of scratch
# (`sin(x)` materialised for the matrix product) again and again, and reports the fewest page faults of a run.
_PROBE = """
import json, os, resource
from jaxdet import host_memory
host_memory.use_huge_pages()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.ones((4096, 8), x.dtype)).sum())
x = jnp.ones((3072, 4096), jnp.float32)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES", ""), "faults": min(faults[1:]), "temp": temp}))
"""


def _probe(**env) -> dict:
  environ = {k: v for k, v in os.environ.items() if k not in ("JAXDET_HOST_MALLOC", "GLIBC_TUNABLES", "XLA_FLAGS")}
  environ.update(JAX_PLATFORMS="cpu", **env)
  result = subprocess.run([sys.executable, "-c", _PROBE], env=environ, capture_output=True, text=True, timeout=300,
                          check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_memory.skip_reason() not in (None, "glibc.malloc.hugetlb is set already",
                                                       "JAXDET_HOST_MALLOC=default"),
                    reason=f"no huge pages here: {host_memory.skip_reason()}")
def test_scratch_memory_faults_in_as_huge_pages():
  tuned, default = _probe(), _probe(JAXDET_HOST_MALLOC="default")
  assert tuned["tunables"] == host_memory.TUNABLE and default["tunables"] == ""
  assert tuned["temp"] >= 48 * 2**20
  pages = tuned["temp"] // 4096
  assert default["faults"] > pages // 2  # glibc maps and unmaps the scratch every run: 4 KiB faults
  assert tuned["faults"] < pages // 20  # ... and 2 MiB ones with the tunable


def test_existing_tunables_are_kept(monkeypatch):
  monkeypatch.delenv("JAXDET_HOST_MALLOC", raising=False)
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=2")
  assert host_memory.skip_reason() == "glibc.malloc.hugetlb is set already"
  host_memory.use_huge_pages()  # returns: nothing to change
  monkeypatch.setenv("JAXDET_HOST_MALLOC", "default")
  assert host_memory.skip_reason() == "JAXDET_HOST_MALLOC=default"
