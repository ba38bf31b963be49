"""jaxdet.models."""
