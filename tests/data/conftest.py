"""Shared data-test fixtures: the `tiny` shapes set generated once per session into a temporary data dir."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """Returns a tfds data dir holding the prepared `shapes/tiny` set (48 / 12 / 12 images, about a second)."""
  from jaxdet.data.shapes import prepare_shapes

  data_dir = tmp_path_factory.mktemp("tfds")
  prepare_shapes(config="tiny", data_dir=data_dir)
  return data_dir
