"""Scene presets and the ``scenes:N[:SEED]`` / ``scenes-hard:N[:SEED]`` dataset specs, in one place.

Two procedural worlds share the ten shape classes and the VOC export:

- ``scenes`` (:mod:`clrp.scenes`): 128 px, 1-3 well separated objects (the quick start);
- ``scenes-hard`` (:mod:`clrp.scenes_hard`): 224 px, 2-5 objects, small objects, occlusion,
  distractor shapes, structured backgrounds, class co-occurrence.

Everything that accepts a generated dataset (the CLI's ``--dataset``, the runner through it,
``make_results.py``, the dashboard) resolves the spec here: :func:`parse_spec` and
:func:`dataset_dir`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

from .errors import ClrpError

#: First seed of an evaluation spec without ``:SEED``: disjoint from the models' training
#: (< 10,000,000), held-out (10,000,000+) and metrics (20,000,000+) seeds, in both presets.
DEFAULT_SEED = 30_000_000

#: preset name (the spec's prefix) -> (module name, description)
PRESETS: dict[str, tuple[str, str]] = {
    "scenes": ("clrp.scenes", "128 px, 1-3 separated shapes (bundled scenes)"),
    "scenes-hard": ("clrp.scenes_hard", "224 px, 2-5 shapes, small objects, occlusion, distractors, "
                                        "structured backgrounds, class co-occurrence"),
}
#: The model trained on each preset (``clrp.models.load(name)``).
PRESET_MODEL = {"scenes": "bundled", "scenes-hard": "bundled-hard"}


@dataclass(frozen=True)
class SceneSpec:
    preset: str
    n: int
    seed: int

    @property
    def module(self) -> ModuleType:
        return preset_module(self.preset)

    @property
    def generator(self) -> str:
        return PRESETS[self.preset][0]

    def __str__(self) -> str:
        return f"{self.preset}:{self.n}:{self.seed}"


def preset_module(preset: str) -> ModuleType:
    """The generator module of ``preset`` (``generate_scene``, ``iter_scenes``, ``CLASS_NAMES``)."""
    import importlib

    if preset not in PRESETS:
        raise ClrpError(f"unknown scene preset {preset!r}; choose from {', '.join(PRESETS)}")
    return importlib.import_module(PRESETS[preset][0])


def _render_chunk(args):
    preset, start, stop, preprocessing = args
    import numpy as np
    import torch

    torch.set_num_threads(1)
    module = preset_module(preset)
    xs, ys = [], []
    for seed in range(start, stop):
        sc = module.generate_scene(seed)
        xs.append(preprocessing.display_array(sc.image))
        ys.append(sc.labels)
    return np.stack(xs), np.stack(ys)


def render_arrays(preset: str, n: int, seed_base: int, preprocessing, *, workers: int = 1, chunk: int = 250):
    """Scenes ``seed_base .. seed_base + n - 1`` of ``preset`` at a model's input geometry
    (``preprocessing.display_array``): ``(uint8 [n, H, W, 3], float32 labels [n, classes])``, as
    the training scripts cache them. ``workers`` > 1 renders in forked processes; each scene is a
    pure function of its seed, so the result does not depend on ``workers`` or ``chunk``."""
    import numpy as np

    jobs = [(preset, seed_base + i, seed_base + min(i + chunk, n), preprocessing) for i in range(0, n, chunk)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def is_spec(text: str) -> bool:
    """Whether ``text`` names generated scenes (``scenes:...`` or ``scenes-hard:...``), as opposed
    to a path. A path that merely starts like a spec (``./scenes:1``) is not one."""
    return isinstance(text, str) and text.split(":", 1)[0] in PRESETS and ":" in text


def parse_spec(spec: str, default_seed: int = DEFAULT_SEED) -> SceneSpec:
    """``PRESET:N`` or ``PRESET:N:SEED`` -> :class:`SceneSpec` (``ClrpError`` with the expected
    form otherwise)."""
    preset, _, rest = str(spec).partition(":")
    if preset not in PRESETS:
        raise ClrpError(f"{spec!r}: expected {' or '.join(p + ':N[:SEED]' for p in PRESETS)}")
    parts = rest.split(":")
    try:
        n = int(parts[0])
        seed = int(parts[1]) if len(parts) > 1 and parts[1] != "" else int(default_seed)
    except ValueError:
        raise ClrpError(f"{spec!r}: expected {preset}:N or {preset}:N:SEED (integers)") from None
    if len(parts) > 2 or n < 1 or seed < 0:
        raise ClrpError(f"{spec!r}: expected {preset}:N[:SEED] with N >= 1, SEED >= 0")
    return SceneSpec(preset, n, seed)


def dataset_dir(spec: str | SceneSpec, folder: str | os.PathLike, *, progress: bool = False) -> str:
    """The scenes of ``spec`` as a VOC folder under ``folder``, generated once
    (:func:`clrp.scenes.voc_cache`; the easy preset's folder is ``scenes-N-SEED``, the hard one's
    ``scenes-hard-N-SEED``)."""
    from . import scenes

    s = spec if isinstance(spec, SceneSpec) else parse_spec(spec)
    return scenes.voc_cache(s.n, s.seed, folder, progress=progress, preset=s.preset)


def generate_scene(image_id: str):
    """The scene behind a VOC image id of either preset (``scene_<seed>`` or ``hard_<seed>``)."""
    prefix, _, seed = str(image_id).rpartition("_")
    preset = {"scene": "scenes", "hard": "scenes-hard"}.get(prefix.rsplit("/", 1)[-1])
    if preset is None or not seed.isdigit():
        raise ValueError(f"not a generated scene id: {image_id!r}")
    return preset_module(preset).generate_scene(int(seed))
