"""Kept for one release: the hard scene world is :mod:`clrp.scenes.hard` (variants: ``world=`` values)."""
from __future__ import annotations

import contextvars
import sys
from contextlib import contextmanager

from .scenes import hard as _hard
from .scenes.export import export_voc  # noqa: F401
from .scenes.hard import (CLASS_NAMES, CONTEXT_FALSE_P, CONTEXT_P, EXCLUSIVE, MIN_VISIBLE_FRACTION,  # noqa: F401
                          MIN_VISIBLE_PIXELS, NUM_CLASSES, OBJECT_COUNT_P, OCCLUDE_P, PARTNER_P, PARTNERS, SCENE_SIZE,
                          SIZE_CATEGORIES, SMALL_AREA, HardScene, HardSceneObject, Scene, SceneObject, context_masks)
from .scenes.hard_paint import CONTEXT_EDGES, CONTEXT_WIDTH  # noqa: F401
from .scenes.shapes import DISTRACTOR_SHAPES, MAX_ROTATION  # noqa: F401

#: variant name -> the constants it changes (the former form; :data:`clrp.scenes.hard.VARIANTS` holds worlds)
VARIANTS: dict[str, dict] = {name: w.changes() for name, w in _hard.VARIANTS.items()}
# the world the functions below generate: set by variant() for this thread/context only
_world = contextvars.ContextVar("clrp_scenes_hard_world", default=_hard.PRESET)


@contextmanager
def variant(name: str):
    """``with variant("partners"): ...``: this module's generator functions draw that world variant
    inside the block (the module constants do not change; pass ``world=`` to :mod:`clrp.scenes.hard`)."""
    token = _world.set(_hard.world_variant(name))
    try:
        yield dict(VARIANTS[name])
    finally:
        _world.reset(token)


def sample_classes(rng):
    return _hard.sample_classes(rng, _world.get())


def scene_classes(seed: int) -> list[int]:
    return _hard.scene_classes(seed, _world.get())


def class_statistics() -> dict:
    return _hard.class_statistics(_world.get())


def generate_layout(seed: int, size: int = SCENE_SIZE):
    return _hard.generate_layout(seed, size, _world.get())


def generate_scene(seed: int, size: int = SCENE_SIZE) -> HardScene:
    return _hard.generate_scene(seed, size, _world.get())


def iter_scenes(n: int, seed: int = 0, size: int = SCENE_SIZE):
    return _hard.iter_scenes(n, seed, size, _world.get())


def generate_dataset(n: int, seed: int = 0, size: int = SCENE_SIZE) -> list[HardScene]:
    return _hard.generate_dataset(n, seed, size, _world.get())


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    print("clrp.scenes_hard: deprecated entry point; use: python -m clrp scenes export --preset scenes-hard ...",
          file=sys.stderr)
    sys.exit(main(["scenes", "export", "--preset", "scenes-hard", *sys.argv[1:]]))
