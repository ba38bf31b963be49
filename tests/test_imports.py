"""Importing jaxdet must not start a JAX backend: multi-host runs call `jax.distributed.initialize` after imports."""

import subprocess
import sys


def test_import_leaves_the_backend_uninitialised():
  code = ("import jax._src.xla_bridge as xb\n"
          "import jaxdet.ops, jaxdet.models, jaxdet.data, jaxdet.eval, jaxdet.train.loop\n"
          "assert not xb._backends, 'a jaxdet import initialised the XLA backend'\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
