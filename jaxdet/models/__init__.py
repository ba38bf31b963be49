"""Flax detectors composed from shared backbones, necks and heads; `build_detector` picks one by name."""

from __future__ import annotations

from typing import Any, Callable

from jaxdet.models.detector import Detections, Detector
from jaxdet.models.detectors.centernet import build_centernet
from jaxdet.models.detectors.yolov1 import build_yolov1
from jaxdet.models.detectors.yolov2 import build_yolov2

DETECTORS: dict[str, Callable[..., Detector]] = {"centernet": build_centernet, "yolov1": build_yolov1,
                                                 "yolov2": build_yolov2}


def build_detector(name: str, *, num_classes: int, **kwargs: Any) -> Detector:
  """Returns the `Detector` registered as `name`, built with `num_classes` and the detector's own options."""
  if name not in DETECTORS:
    raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}")
  return DETECTORS[name](num_classes=num_classes, **kwargs)
