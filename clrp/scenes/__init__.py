"""Procedural scene worlds with exact ground truth (boxes and masks), and their VOC export.

- :mod:`clrp.scenes.shapes`: the ten shape classes, the scene records, the shapes and the one
  rasteriser; :mod:`clrp.scenes.backgrounds`: backgrounds and clutter both worlds paint;
- :mod:`clrp.scenes.easy`: the easy world (preset ``scenes``, 128 px, 1-3 objects);
- :mod:`clrp.scenes.hard` (painting in :mod:`clrp.scenes.hard_paint`): the hard world (preset
  ``scenes-hard``, 224 px, 2-5 objects, occlusion, distractors, co-occurrence), its variants
  as :class:`~clrp.scenes.hard.HardWorld` values passed in;
- :mod:`clrp.scenes.export`: VOC export of any scenes;
- :mod:`clrp.scenes.presets`: the presets, the ``scenes:N[:SEED]`` specs and the VOC cache;
- :mod:`clrp.scenes.cli`: ``python -m clrp scenes export``.

The names below are those the former module ``clrp.scenes`` had (the easy world, its export and
cache), kept for one release; new code imports the modules above.
"""
from .cli import export_main  # noqa: F401
from .easy import (MAX_OBJECT_SIZE, MIN_OBJECT_SIZE, OBJECT_COUNT_P, SCENE_SIZE, generate_dataset,  # noqa: F401
                   generate_scene, iter_scenes)
from .export import export_voc, scene_to_voc_xml
from .presets import EVALUATION_SEED, SAMPLE_SEED, voc_cache  # noqa: F401
from .shapes import CLASS_NAMES, MAX_ROTATION, NUM_CLASSES, Scene, SceneObject, scene_labels  # noqa: F401

__all__ = [
    "CLASS_NAMES",
    "SCENE_SIZE",
    "SceneObject",
    "Scene",
    "generate_scene",
    "generate_dataset",
    "iter_scenes",
    "scene_labels",
    "export_voc",
    "scene_to_voc_xml",
]
