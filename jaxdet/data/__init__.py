"""jaxdet.data: the example layout, the embedded `shapes` set, COCO / VOC / tfds readers, transforms, the loader."""

from jaxdet.data.bad_input import BadInputError
from jaxdet.data.coco import CocoSource, export_coco
from jaxdet.data.loader import DEFAULT_MULTISCALE_SIZES, Loader, make_loader, multiscale_size
from jaxdet.data.mosaic import mosaic
from jaxdet.data.photometric import normalize_image
from jaxdet.data.shapes import CLASS_NAMES as SHAPES_CLASS_NAMES
from jaxdet.data.shapes import Shapes, ShapesConfig, ShapesSource, prepare_shapes
from jaxdet.data.source import EXAMPLE_KEYS, DetectionSource, Example, ListSource, make_example, to_original_frame
from jaxdet.data.tfds_sources import COCO_CATEGORY_IDS, TfdsSource
from jaxdet.data.transforms import Augment, SSDAugment, eval_transform, ssd_train_transform, train_transform
from jaxdet.data.visualize import draw_boxes, save_png
from jaxdet.data.voc import VOC_CLASSES, VocSource

__all__ = [
    "Augment", "BadInputError", "COCO_CATEGORY_IDS", "CocoSource", "DEFAULT_MULTISCALE_SIZES", "DetectionSource",
    "EXAMPLE_KEYS", "Example", "ListSource", "Loader", "SHAPES_CLASS_NAMES", "SSDAugment", "Shapes", "ShapesConfig",
    "ShapesSource", "TfdsSource", "VOC_CLASSES", "VocSource", "draw_boxes", "eval_transform", "export_coco",
    "make_example", "make_loader", "mosaic", "multiscale_size", "normalize_image", "prepare_shapes", "save_png",
    "ssd_train_transform", "to_original_frame", "train_transform",
]
