"""Region proposals computed on the host (NumPy), cached per split: selective search."""
