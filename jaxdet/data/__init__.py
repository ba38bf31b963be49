"""jaxdet.data."""
