"""jaxdet.models.backbones."""
