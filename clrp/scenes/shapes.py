"""What both scene worlds share: the ten shape classes, the scene records, the shapes (of the
classes and of the hard world's class-less distractors) and the one rasteriser that draws them.

A shape is a list of drawing *ops* in unit coordinates (centre 0, extent [-1, 1]): an op is
``("poly", points, fill)`` or ``("ellipse", (cx, cy, rx, ry), fill)``; fill 1 draws, 0 erases.
:func:`coverage` renders ops, placed, scaled and rotated, as anti-aliased coverage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

#: Shape classes, in class-index order.
CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "heart",
    "diamond",
    "crescent",
    "arrow",
)
NUM_CLASSES = len(CLASS_NAMES)
#: Maximum absolute rotation of an object, degrees (so ``square`` and ``diamond`` stay distinct).
MAX_ROTATION = 20.0
#: Shapes drawn mirrored half of the time (the others are symmetric).
FLIPPABLE = ("crescent", "arrow")
#: The hard world's distractors: shapes of no class.
DISTRACTOR_SHAPES = ("bar", "L", "T", "chevron", "U")

_SS = 4  # supersampling factor used to render anti-aliased shapes


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    ``box`` = ``(x0, y0, x1, y1)``, 0-based pixel coordinates, inclusive on both ends; it is the
    tight bounding box of ``mask`` (bool ``H x W``).
    """

    class_name: str
    class_index: int
    box: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False, compare=False)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8, H x W x 3
    objects: list[SceneObject]
    seed: int | None = None

    @property
    def class_indices(self) -> list[int]:
        return sorted({o.class_index for o in self.objects})

    @property
    def class_names(self) -> list[str]:
        return [CLASS_NAMES[i] for i in self.class_indices]

    @property
    def labels(self) -> np.ndarray:
        """Multi-hot float32 vector of length ``len(CLASS_NAMES)``."""
        return scene_labels(self)

    @property
    def name(self) -> str:
        return f"scene_{self.seed:08d}" if self.seed is not None else "scene"


def scene_labels(scene: Scene) -> np.ndarray:
    y = np.zeros(NUM_CLASSES, dtype=np.float32)
    for o in scene.objects:
        y[o.class_index] = 1.0
    return y


def shape_ops(name: str, rng: np.random.Generator) -> list[tuple]:
    """The ops of class ``name`` (some classes draw a proportion from ``rng``)."""
    if name == "circle":
        return [("ellipse", (0.0, 0.0, 1.0, 1.0), 1)]
    if name == "square":
        return [("poly", [(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)], 1)]
    if name == "triangle":
        return [("poly", [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)], 1)]
    if name == "star":
        inner = float(rng.uniform(0.38, 0.48))
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else inner
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((r * math.cos(a), r * math.sin(a)))
        return [("poly", pts, 1)]
    if name == "cross":
        t = float(rng.uniform(0.28, 0.38))
        return [
            ("poly", [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)], 1)
        ]
    if name == "ring":
        inner = float(rng.uniform(0.5, 0.65))
        return [("ellipse", (0.0, 0.0, 1.0, 1.0), 1), ("ellipse", (0.0, 0.0, inner, inner), 0)]
    if name == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 17.0, -(y + 2.5) / 15.5))
        return [("poly", pts, 1)]
    if name == "diamond":  # a rhombus standing on a vertex
        return [("poly", [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)], 1)]
    if name == "crescent":
        off = float(rng.uniform(0.45, 0.6))
        return [("ellipse", (0.0, 0.0, 1.0, 1.0), 1), ("ellipse", (off, -0.12, 0.85, 0.85), 0)]
    if name == "arrow":
        s = float(rng.uniform(0.22, 0.3))
        return [("poly", [(-1, -s), (0.15, -s), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, s), (-1, s)], 1)]
    raise ValueError(f"unknown shape {name!r}")


def distractor_ops(name: str, rng: np.random.Generator) -> list[tuple]:
    """The ops of a class-less distractor shape (:data:`DISTRACTOR_SHAPES`)."""
    t = float(rng.uniform(0.2, 0.32))
    if name == "bar":
        return [("poly", [(-1, -t), (1, -t), (1, t), (-1, t)], 1)]
    if name == "L":
        return [("poly", [(-1, -1), (-1 + 2 * t, -1), (-1 + 2 * t, 1 - 2 * t), (1, 1 - 2 * t), (1, 1), (-1, 1)], 1)]
    if name == "T":
        return [("poly", [(-1, -1), (1, -1), (1, -1 + 2 * t), (t, -1 + 2 * t), (t, 1), (-t, 1), (-t, -1 + 2 * t),
                          (-1, -1 + 2 * t)], 1)]
    if name == "chevron":
        w = 2.2 * t
        return [("poly", [(-1, -0.9), (-1 + w, -0.9), (0, 0.9 - 2.2 * w), (1 - w, -0.9), (1, -0.9), (0, 0.9)], 1)]
    if name == "U":
        return [("poly", [(-1, -1), (-1 + 2 * t, -1), (-1 + 2 * t, 1 - 2 * t), (1 - 2 * t, 1 - 2 * t), (1 - 2 * t, -1),
                          (1, -1), (1, 1), (-1, 1)], 1)]
    raise ValueError(f"unknown distractor shape {name!r}")


def coverage(ops: list[tuple], cx: float, cy: float, sx: float, sy: float, angle_deg: float, flip: bool,
             size: int, *, window: bool = True) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] (float32 ``size x size``) of ``ops`` centred at ``(cx, cy)``,
    scaled by ``(sx, sy)``, mirrored if ``flip``, rotated by ``angle_deg``; rendered at 4x and
    box-filtered. ``window``: render only a window around the shape (fast); ``window=False``
    renders the whole image (the easy world's way: its scenes stay byte-identical to earlier
    versions)."""
    if window:
        rad = math.ceil(math.hypot(sx, sy)) + 2
        x0, y0 = max(0, int(math.floor(cx)) - rad), max(0, int(math.floor(cy)) - rad)
        x1, y1 = min(size, int(math.floor(cx)) + rad + 1), min(size, int(math.floor(cy)) + rad + 1)
    else:
        x0, y0, x1, y1 = 0, 0, size, size
    out = np.zeros((size, size), dtype=np.float32)
    if x1 <= x0 or y1 <= y0:
        return out
    w, h = x1 - x0, y1 - y0
    img = Image.new("L", (w * _SS, h * _SS), 0)
    draw = ImageDraw.Draw(img)
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)

    def tr(x: float, y: float) -> tuple[float, float]:
        if flip:
            x = -x
        x, y = x * sx, y * sy
        return ((cx - x0 + x * ca - y * sa) * _SS, (cy - y0 + x * sa + y * ca) * _SS)

    for op in ops:
        fill = 255 if op[2] else 0
        if op[0] == "poly":
            draw.polygon([tr(x, y) for x, y in op[1]], fill=fill)
        else:
            ex, ey, rx, ry = op[1]
            pts = [(ex + rx * math.cos(2 * math.pi * k / 96), ey + ry * math.sin(2 * math.pi * k / 96)) for k in range(96)]
            draw.polygon([tr(x, y) for x, y in pts], fill=fill)
    out[y0:y1, x0:x1] = np.asarray(img.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255.0
    return out
