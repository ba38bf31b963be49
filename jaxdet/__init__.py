"""jaxdet: the object-detection canon as pure JAX functions and Flax modules."""

__version__ = "0.1.0"
