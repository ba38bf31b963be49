"""jaxdet.eval."""
