"""Flax detectors composed from shared backbones, necks and heads; `build_detector` picks one by name."""

from __future__ import annotations

from typing import Any, Callable

from jaxdet.models.detector import Detections, Detector
from jaxdet.models.detectors.centernet import build_centernet
from jaxdet.models.detectors.fast_rcnn import build_fast_rcnn
from jaxdet.models.detectors.faster_rcnn import build_faster_rcnn
from jaxdet.models.detectors.fcos import build_fcos
from jaxdet.models.detectors.iou_net import build_faster_rcnn_iounet
from jaxdet.models.detectors.kl_rcnn import build_faster_rcnn_kl
from jaxdet.models.detectors.rcnn import build_rcnn
from jaxdet.models.detectors.retinanet import build_retinanet
from jaxdet.models.detectors.ssd import build_ssd
from jaxdet.models.detectors.yolov1 import build_yolov1
from jaxdet.models.detectors.yolov2 import build_yolov2
from jaxdet.models.detectors.yolov3 import build_yolov3
from jaxdet.models.detectors.yolov4 import build_yolov4

DETECTORS: dict[str, Callable[..., Detector]] = {
    "centernet": build_centernet,
    "fast_rcnn": build_fast_rcnn,
    "faster_rcnn": build_faster_rcnn,
    "faster_rcnn_iounet": build_faster_rcnn_iounet,
    "faster_rcnn_kl": build_faster_rcnn_kl,
    "fcos": build_fcos,
    "rcnn": build_rcnn,
    "retinanet": build_retinanet,
    "ssd": build_ssd,
    "yolov1": build_yolov1,
    "yolov2": build_yolov2,
    "yolov3": build_yolov3,
    "yolov4": build_yolov4,
}


def build_detector(name: str, *, num_classes: int, **kwargs: Any) -> Detector:
  """Returns the `Detector` registered as `name`, built with `num_classes` and the detector's own options."""
  if name not in DETECTORS:
    raise ValueError(f"unknown detector {name!r}; known: {sorted(DETECTORS)}")
  return DETECTORS[name](num_classes=num_classes, **kwargs)
