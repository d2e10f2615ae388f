"""Small embedded datasets (no downloads) for demos and end-to-end checks."""

from .digits import DATASETS, SHAPES, have_digits, load_digits, load_images, make_shapes
from .scene import Scene, make_scene, scene_field
from .text import decode, encode, stdlib_corpus

__all__ = ["make_shapes", "load_digits", "load_images", "have_digits", "SHAPES", "DATASETS",
           "stdlib_corpus", "encode", "decode", "Scene", "make_scene", "scene_field"]
