"""jaxdet: the object-detection canon as pure JAX functions and Flax modules."""

from jaxdet import host_memory as _host_memory

__version__ = "0.1.0"

_host_memory.configure()  # before jax starts a backend: see jaxdet/host_memory.py
