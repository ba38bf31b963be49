"""Shared pytest setup: CPU-only JAX, one XLA compilation cache for the session, deterministic hypothesis profile,
the tiny shapes set."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Most of the suite's time is XLA compiling, and much of it compiles a program already compiled elsewhere in the
# session: the scripts' tests run train.py, then eval.py and predict.py (or a resumed train.py) in fresh processes
# on the same network. One persistent compilation cache for the session (this process, the pytest-xdist workers and
# every process a test spawns inherit it through the environment) compiles each such program once:
# tests/experiments/test_experiments.py took 148 s instead of 239. The cache key holds the program, the XLA flags and
# the machine, so a hit is the executable this machine would compile. A size limit turns on the cache's file lock,
# which concurrent processes need (two workers, the two-process test). The directory goes when the session ends;
# a cache already set in the environment is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdet-tests-xla-cache-")
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("jaxdet", max_examples=50, deadline=None, derandomize=True)
settings.load_profile("jaxdet")


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """Returns a tfds data dir holding the prepared `shapes/tiny` set (48 / 12 / 12 images, about a second)."""
  from jaxdet.data.shapes import prepare_shapes

  data_dir = tmp_path_factory.mktemp("tfds")
  prepare_shapes(config="tiny", data_dir=data_dir)
  return data_dir
