"""The embedded `shapes` detection set: renderer, tfds builder, `ShapesSource`; `python -m jaxdet.data.shapes`."""

from jaxdet.data.shapes.builder import CONFIGS, Shapes, ShapesConfig
from jaxdet.data.shapes.render import CLASS_NAMES, Scene, SceneSpec, render_scene
from jaxdet.data.shapes.source import ShapesSource, default_data_dir, prepare_shapes

__all__ = ["CLASS_NAMES", "CONFIGS", "Scene", "SceneSpec", "Shapes", "ShapesConfig", "ShapesSource",
           "default_data_dir", "prepare_shapes", "render_scene"]
