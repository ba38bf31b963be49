"""jaxdet.models.necks."""
