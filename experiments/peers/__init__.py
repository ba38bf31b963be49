"""torchvision peers of jaxdet's detectors, trained on the same data and schedule (see `common.py`)."""
