"""jaxdet.models.heads."""
