"""jaxdet.data: the example layout, the embedded `shapes` set, COCO / VOC / tfds readers (transforms and the grain
loader live beside them)."""

from jaxdet.data.bad_input import BadInputError
from jaxdet.data.coco import CocoSource, export_coco
from jaxdet.data.shapes import CLASS_NAMES as SHAPES_CLASS_NAMES
from jaxdet.data.shapes import Shapes, ShapesConfig, ShapesSource, prepare_shapes
from jaxdet.data.source import EXAMPLE_KEYS, DetectionSource, Example, ListSource, make_example, to_original_frame
from jaxdet.data.tfds_sources import COCO_CATEGORY_IDS, TfdsSource
from jaxdet.data.voc import VOC_CLASSES, VocSource

__all__ = [
    "BadInputError", "COCO_CATEGORY_IDS", "CocoSource", "DetectionSource", "EXAMPLE_KEYS", "Example", "ListSource",
    "SHAPES_CLASS_NAMES", "Shapes", "ShapesConfig", "ShapesSource", "TfdsSource", "VOC_CLASSES", "VocSource",
    "export_coco", "make_example", "prepare_shapes", "to_original_frame",
]
