"""Shared pytest setup: CPU-only JAX, deterministic hypothesis profile."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from hypothesis import settings  # noqa: E402

settings.register_profile("jaxdet", max_examples=50, deadline=None, derandomize=True)
settings.load_profile("jaxdet")
