"""Scene presets, the ``scenes:N[:SEED]`` / ``scenes-hard:N[:SEED]`` dataset specs and the VOC cache
of generated datasets, in one place.

Two procedural worlds share the ten shape classes and the VOC export:

- ``scenes`` (:mod:`clrp.scenes.easy`): 128 px, 1-3 well separated objects (the quick start);
- ``scenes-hard`` (:mod:`clrp.scenes.hard`): 224 px, 2-5 objects, small objects, occlusion,
  distractor shapes, structured backgrounds, class co-occurrence.

Everything that accepts a generated dataset (the CLI's ``--dataset``, the runner through it,
``make_results.py``, the dashboard) resolves the spec here: :func:`parse_spec` and
:func:`dataset_dir` (:func:`voc_cache`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

from ..errors import ClrpError
from . import easy, hard
from .export import export_voc

#: First seed of an evaluation spec without ``:SEED`` (``python -m clrp evaluate --dataset scenes:N``,
#: make_results.py): disjoint from the models' training (< 10,000,000), held-out (10,000,000+) and
#: metrics (20,000,000+) seeds, in both presets.
EVALUATION_SEED = 30_000_000
DEFAULT_SEED = EVALUATION_SEED
#: The scene shown first in the dashboard and the README's examples (a star and an arrow; a
#: metrics seed, never seen in training).
SAMPLE_SEED = 20_000_006


@dataclass(frozen=True)
class ScenePreset:
    """A preset: a world (its generator module), what it is, the model trained on it and the names
    its datasets carry. ``world=`` arguments are variants of the hard world (``HardWorld`` values)."""

    name: str            # the spec's prefix
    module: ModuleType   # the world: generate_scene, iter_scenes, CLASS_NAMES, SCENE_SIZE
    description: str
    model: str           # the model trained on it (``clrp.models.load(model)``)
    generator: str       # recorded in settings.json and the cache's complete.json (stable across versions)
    id_prefix: str       # VOC image ids are ``<id_prefix>_<seed:08d>``
    folder_name: str     # ``<folder>`` of the VOC annotations ``python -m clrp scenes export`` writes

    def generate_scene(self, seed: int, world=None):
        """Scene ``seed``; ``world``: a variant (:class:`clrp.scenes.hard.HardWorld`, hard preset only)."""
        return self.module.generate_scene(int(seed), **self._variant(world))

    def iter_scenes(self, n: int, seed: int, world=None):
        return self.module.iter_scenes(n, seed, **self._variant(world))

    def _variant(self, world) -> dict:
        if world is None:
            return {}
        if self.module is not hard:
            raise ClrpError(f"the {self.name} preset has no world variants")
        return {"world": world}


PRESETS: dict[str, ScenePreset] = {p.name: p for p in (
    ScenePreset("scenes", easy, "128 px, 1-3 separated shapes (bundled scenes)", "bundled",
                "clrp.scenes", "scene", "CLRPScenes"),
    ScenePreset("scenes-hard", hard, "224 px, 2-5 shapes, small objects, occlusion, distractors, "
                                     "structured backgrounds, class co-occurrence", "bundled-hard",
                "clrp.scenes_hard", "hard", "CLRPHardScenes"),
)}
#: The model trained on each preset (``clrp.models.load(name)``).
PRESET_MODEL = {name: p.model for name, p in PRESETS.items()}


def get_preset(name: str) -> ScenePreset:
    """The preset ``name``; ``ClrpError`` listing the presets otherwise."""
    if name not in PRESETS:
        raise ClrpError(f"unknown scene preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_module(name: str) -> ModuleType:
    """The generator module of preset ``name`` (``generate_scene``, ``iter_scenes``, ``CLASS_NAMES``)."""
    return get_preset(name).module


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
        return PRESETS[self.preset].generator

    def __str__(self) -> str:
        return f"{self.preset}:{self.n}:{self.seed}"


def _render_chunk(args):
    name, start, stop, preprocessing, world = args
    import numpy as np
    import torch

    torch.set_num_threads(1)
    p = get_preset(name)
    xs, ys = [], []
    for seed in range(start, stop):
        sc = p.generate_scene(seed, world)
        xs.append(preprocessing.display_array(sc.image))
        ys.append(sc.labels)
    return np.stack(xs), np.stack(ys)


def render_arrays(preset: str, n: int, seed_base: int, preprocessing, *, workers: int = 1, chunk: int = 250,
                  world=None):
    """Scenes ``seed_base .. seed_base + n - 1`` of ``preset`` (``world``: a variant of the hard
    one) at a model's input geometry (``preprocessing.display_array``): ``(uint8 [n, H, W, 3],
    float32 labels [n, classes])``, as the training scripts cache them. ``workers`` > 1 renders in
    forked processes; each scene is a pure function of its seed, so the result does not depend on
    ``workers`` or ``chunk``."""
    import numpy as np

    jobs = [(preset, seed_base + i, seed_base + min(i + chunk, n), preprocessing, world) for i in range(0, n, chunk)]
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
    name, _, rest = str(spec).partition(":")
    if name not in PRESETS:
        raise ClrpError(f"{spec!r}: expected {' or '.join(p + ':N[:SEED]' for p in PRESETS)}")
    parts = rest.split(":")
    try:
        n = int(parts[0])
        seed = int(parts[1]) if len(parts) > 1 and parts[1] != "" else int(default_seed)
    except ValueError:
        raise ClrpError(f"{spec!r}: expected {name}:N or {name}:N:SEED (integers)") from None
    if len(parts) > 2 or n < 1 or seed < 0:
        raise ClrpError(f"{spec!r}: expected {name}:N[:SEED] with N >= 1, SEED >= 0")
    return SceneSpec(name, n, seed)


def dataset_dir(spec: str | SceneSpec, folder: str | os.PathLike, *, progress: bool = False) -> str:
    """The scenes of ``spec`` as a VOC folder under ``folder``, generated once (:func:`voc_cache`;
    the easy preset's folder is ``scenes-N-SEED``, the hard one's ``scenes-hard-N-SEED``)."""
    s = spec if isinstance(spec, SceneSpec) else parse_spec(spec)
    return voc_cache(s.n, s.seed, folder, progress=progress, preset=s.preset)


def scene_from_id(image_id: str):
    """The scene behind a VOC image id of either preset (``scene_<seed>`` or ``hard_<seed>``)."""
    prefix, _, seed = str(image_id).rpartition("_")
    by_prefix = {p.id_prefix: p for p in PRESETS.values()}
    p = by_prefix.get(prefix.rsplit("/", 1)[-1])
    if p is None or not seed.isdigit():
        raise ValueError(f"not a generated scene id: {image_id!r}")
    return p.generate_scene(int(seed))


def voc_cache(n: int, seed: int, folder: str | os.PathLike, *, progress: bool = False,
              preset: str = "scenes") -> str:
    """Scenes ``seed .. seed+n-1`` of ``preset`` as a VOC folder ``folder/<preset>-<n>-<seed>``,
    generated once.

    Safe for several workers sharing ``folder`` (``--cache-dir`` with ``--shard``): one generates
    while the others wait on a lock; generation writes a temporary folder and renames it into place
    only when complete (a ``complete.json`` marker inside), so a returned folder is always whole
    and nobody deletes files another worker reads."""
    import json
    import shutil
    import sys
    import uuid

    from ..fileio import file_lock, makedirs

    folder = str(folder)
    makedirs(folder, f"create the scenes cache folder {folder}")
    p = get_preset(preset)
    name = f"{preset}-{n}-{seed}"
    dest = os.path.join(folder, name)
    marker = os.path.join(dest, "complete.json")
    if os.path.isfile(marker):
        return dest
    with file_lock(os.path.join(folder, f".{name}.lock"), blocking=True):
        if os.path.isfile(marker):
            return dest  # another worker finished while this one waited
        for stale in os.listdir(folder):  # leftovers of a generator that died (we hold the lock)
            if stale.startswith(f".{name}.tmp-"):
                shutil.rmtree(os.path.join(folder, stale), ignore_errors=True)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        it = p.iter_scenes(n, seed)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=n, unit="scene", desc="generating scenes", file=sys.stderr)
        try:
            export_voc(it, tmp, split="test")  # <folder> CLRPScenes for both presets, as always
            with open(os.path.join(tmp, "complete.json"), "w", encoding="utf-8") as f:
                json.dump({"n": n, "seed": seed, "seeds": [seed, seed + n - 1], "generator": p.generator}, f)
            if os.path.isdir(dest):  # an incomplete folder from an older version: set it aside
                old = f"{tmp}-old"
                os.rename(dest, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
