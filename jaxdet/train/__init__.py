"""jaxdet.train."""
