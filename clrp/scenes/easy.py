"""The *easy* scene world (preset ``scenes``): deterministic procedural multi-object scenes with
exact ground truth, the quick start and the bundled model's world.

Every scene is a ``SCENE_SIZE`` x ``SCENE_SIZE`` (128 x 128) RGB image holding 1 to 3 objects of
*distinct* classes drawn from :data:`~clrp.scenes.shapes.CLASS_NAMES` (10 shape classes), with random
colours, sizes, aspect ratios and small rotations, on a cluttered background (colour gradient,
low-frequency blotches, pixel noise, stripes, distractor strokes and dots). Each object carries its
class, a pixel mask (the pixels where the object is visible, i.e. its anti-aliased coverage >= 0.5)
and a box which is exactly the tight bounding box of that mask, in 0-based pixel coordinates
``(x0, y0, x1, y1)`` with ``x1``/``y1`` **inclusive**. Object masks never overlap.

The generator is a pure function of the seed: ``generate_scene(s)`` returns byte-identical
images for the same ``s`` on every run and platform (it only uses ``numpy.random.Generator``
(PCG64) and PIL drawing primitives).

Two rules make the shape classes unambiguous: rotations are limited to +-``MAX_ROTATION``
degrees (so ``square`` and ``diamond`` stay distinct), and the ``diamond`` is a rhombus standing
on a vertex.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .backgrounds import background, contrasting_colour, strokes
from .shapes import CLASS_NAMES, FLIPPABLE, MAX_ROTATION, NUM_CLASSES, Scene, SceneObject, coverage, shape_ops

__all__ = ["CLASS_NAMES", "SCENE_SIZE", "generate_scene", "generate_dataset", "iter_scenes"]

#: Side of every generated scene, pixels.
SCENE_SIZE = 128
#: Object size (longest side of its nominal bounding square), pixels.
MIN_OBJECT_SIZE = 22
MAX_OBJECT_SIZE = 46
#: Probability of 1, 2 and 3 objects.
OBJECT_COUNT_P = (0.3, 0.4, 0.3)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation with a (2r+1) x (2r+1) square."""
    h, w = mask.shape
    p = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def generate_scene(seed: int, size: int = SCENE_SIZE, n_objects: int | None = None) -> Scene:
    """Generate one scene, a pure function of ``seed`` (and ``size``/``n_objects``)."""
    seed = int(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC1A5]))
    img = background(rng, size)
    if n_objects is None:
        n_objects = int(rng.choice([1, 2, 3], p=OBJECT_COUNT_P))
    n_objects = max(1, min(int(n_objects), NUM_CLASSES))
    classes = rng.choice(NUM_CLASSES, size=n_objects, replace=False)

    scale = size / SCENE_SIZE
    occupied = np.zeros((size, size), dtype=bool)  # placed masks, dilated by 2 px
    placed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (class, coverage, mask)
    for ci in classes:
        ci = int(ci)
        name = CLASS_NAMES[ci]
        ops = shape_ops(name, rng)
        for attempt in range(60):
            obj = rng.uniform(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE) * scale
            aspect = rng.uniform(0.8, 1.25)
            sx, sy = obj / 2 * math.sqrt(aspect), obj / 2 / math.sqrt(aspect)
            ang = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
            flip = bool(rng.random() < 0.5) if name in FLIPPABLE else False
            margin = max(sx, sy) + 1
            cx = rng.uniform(margin, size - margin)
            cy = rng.uniform(margin, size - margin)
            cov = coverage(ops, cx, cy, sx, sy, ang, flip, size, window=False)
            mask = cov >= 0.5
            if mask.sum() < 30:
                continue
            if not (mask & occupied).any():
                break
        else:  # could not place without overlap: drop this object (rare)
            continue
        occupied |= _dilate(mask, 2)
        placed.append((ci, cov, mask))

    # distractors go below the objects
    layer, alpha = strokes(rng, size)
    al = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0
    img = img * (1 - al) + np.asarray(layer, dtype=np.float32) * al
    img += rng.normal(0, rng.uniform(3, 14), size=img.shape).astype(np.float32)
    img = np.clip(img, 0, 255)

    objects: list[SceneObject] = []
    for ci, cov, mask in placed:
        local = img[mask].mean(axis=0)
        colour = contrasting_colour(rng, local, 110, 140.0)   # a minimum contrast to the local background
        # object texture: shading gradient + own noise, computed on the coverage's bounding box
        cys, cxs = np.nonzero(cov > 0)
        ya, yb, xa, xb = int(cys.min()), int(cys.max()) + 1, int(cxs.min()), int(cxs.max()) + 1
        yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32)
        g = (np.cos(rng.uniform(0, 2 * math.pi)) * xx + np.sin(rng.uniform(0, 2 * math.pi)) * yy) / size
        tex = colour[None, None, :] + (g[..., None] * rng.uniform(-40, 40))
        tex = tex + rng.normal(0, rng.uniform(2, 10), size=tex.shape).astype(np.float32)
        a = cov[ya:yb, xa:xb, None]
        img[ya:yb, xa:xb] = img[ya:yb, xa:xb] * (1 - a) + np.clip(tex, 0, 255) * a
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        objects.append(SceneObject(CLASS_NAMES[ci], ci, box, mask))

    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Scene(image=image, objects=objects, seed=seed)


def iter_scenes(n: int, seed: int = 0, size: int = SCENE_SIZE) -> Iterable[Scene]:
    """Scenes with seeds ``seed, seed + 1, ..., seed + n - 1``."""
    for i in range(int(n)):
        yield generate_scene(int(seed) + i, size=size)


def generate_dataset(n: int, seed: int = 0, size: int = SCENE_SIZE) -> list[Scene]:
    """``n`` scenes with seeds ``seed .. seed + n - 1`` (so disjoint ranges give disjoint sets)."""
    return list(iter_scenes(n, seed, size))
