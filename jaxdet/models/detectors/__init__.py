"""jaxdet.models.detectors."""
