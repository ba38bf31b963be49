"""Shared pytest setup: CPU-only JAX, deterministic hypothesis profile, the tiny shapes set."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
