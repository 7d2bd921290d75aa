"""The *hard* scene preset: a procedural world with the headroom of a real benchmark.

The easy preset (:mod:`clrp.scenes`, 128 px, 1-3 well separated high-contrast objects) saturates
the Pointing Game: every explanation method scores ~1.0 there. This preset keeps the same ten
shape classes (:data:`clrp.scenes.CLASS_NAMES`), the same :class:`~clrp.scenes.SceneObject`
ground truth and the same VOC export, and makes the scenes harder in the ways real photos are:

- **224 x 224** RGB scenes with **2-5 objects** of distinct classes
  (P = :data:`OBJECT_COUNT_P` for 2, 3, 4, 5).
- **Small objects**: each object is small with probability :data:`SIZE_CATEGORIES` ``small``
  (nominal size 20-44 px; its box is then always under 1/16 of the image, :data:`SMALL_AREA`
  pixels), medium (46-80 px) or large (80-112 px). Half of the objects are drawn small, and
  with the smaller medium ones and the occluded ones about 70 % of the objects end up with a
  visible box under 1/16 of the image (72 % of the 657 objects of seeds 0..199).
- **Partial occlusion**: objects are painted in a random order, later ones on top; about half of
  the objects are placed against an object already there. Every object keeps at least
  :data:`MIN_VISIBLE_FRACTION` of its pixels (and :data:`MIN_VISIBLE_PIXELS`) visible.
- **Distractors**: 1-4 shapes that belong to no class (bar, L, T, chevron, U; any rotation),
  drawn with the objects' colour and texture distributions, below the objects.
- **Structured backgrounds**: the easy preset's gradient/blotch/stripe background plus one of
  bands, soft checks, bricks, a line grid, waves or plaid, strokes and arcs, pixel noise; object
  colours need less contrast to the background than in the easy preset.
- **Class co-occurrence** (shortcuts a model can learn and an explanation should expose): the
  class set of a scene is drawn by :func:`sample_classes`: classes are picked one by one,
  uniformly among those still allowed; after picking a member of a *partner* pair
  (:data:`PARTNERS`: triangle-star, heart-crescent, cross-arrow) its partner is added next with
  probability :data:`PARTNER_P` (if the scene has room); the *exclusive* pairs
  (:data:`EXCLUSIVE`: circle-ring, square-diamond) never appear together. The exact
  probability of every class and pair under this process is :func:`class_statistics`
  (enumerated, not sampled): e.g. P(star | triangle) = 0.81, while an unrelated pair such as
  P(heart | circle) = 0.35.

Ground truth, as in the easy preset: each object's ``mask`` is its *visible* part (the pixels
where its anti-aliased coverage is >= 0.5 and no object painted above it has coverage >= 0.5),
masks of a scene never overlap, and ``box`` = the tight bounding box of the mask (0-based, inclusive).
:class:`HardSceneObject` also carries ``full_mask`` (the whole shape, hidden part included) and
``depth`` (painting order, 0 = bottom): the hidden part ``full_mask & ~mask`` of an object lies
under the masks of the objects painted above it.

Determinism: a scene is a pure function of its seed; three independent random streams (derived
from the seed with ``numpy.random.SeedSequence``) draw the class set, the geometry and the
painting, so :func:`scene_classes` (class set only, ~0.1 ms) and :func:`generate_layout`
(geometry and masks, no painting) agree exactly with :func:`generate_scene`.

World variants (:data:`VARIANTS`, :func:`variant`) change some of the constants above for a while,
for experiments on where the Pointing Game's headroom comes from (``scripts/headroom_probe.py``,
``scripts/train_hard_model.py --variant``): objects apart, crowded scenes, partners whenever there is
room, only small objects, or *class context* (bands along the image edges in a style that predicts
a class without proving it, as water predicts a boat); the preset itself draws none of them.

Seeds follow the easy preset's convention: training < 10,000,000, held-out 10,000,000+,
metrics 20,000,000+, evaluation (``scenes-hard:N``, ``make_results.py``) 30,000,000+.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from . import scenes as _easy
from .scenes import CLASS_NAMES, NUM_CLASSES, Scene, SceneObject, export_voc  # noqa: F401 (re-exported)

__all__ = [
    "CLASS_NAMES",
    "SCENE_SIZE",
    "SMALL_AREA",
    "PARTNERS",
    "EXCLUSIVE",
    "PARTNER_P",
    "OBJECT_COUNT_P",
    "HardScene",
    "HardSceneObject",
    "sample_classes",
    "scene_classes",
    "class_statistics",
    "generate_layout",
    "generate_scene",
    "generate_dataset",
    "iter_scenes",
    "export_voc",
    "VARIANTS",
    "variant",
    "context_masks",
]

#: Side of every hard scene, pixels.
SCENE_SIZE = 224
#: An object whose box covers fewer pixels than this (1/16 of the image) is "small".
SMALL_AREA = SCENE_SIZE * SCENE_SIZE / 16
#: Probability of 2, 3, 4 and 5 objects.
OBJECT_COUNT_P = (0.3, 0.3, 0.25, 0.15)
#: (name, probability, min, max nominal size in px: the side of the shape's nominal square).
SIZE_CATEGORIES = (("small", 0.5, 20.0, 44.0), ("medium", 0.37, 46.0, 80.0), ("large", 0.13, 80.0, 112.0))
#: Partner pairs (strong co-occurrence) and exclusive pairs (never together), by class name.
PARTNERS = (("triangle", "star"), ("heart", "crescent"), ("cross", "arrow"))
EXCLUSIVE = (("circle", "ring"), ("square", "diamond"))
#: Probability that a partner is added right after its pair's other member (room permitting).
PARTNER_P = 0.9
#: Every object keeps at least this share of its pixels, and this many pixels, visible.
MIN_VISIBLE_FRACTION = 0.5
MIN_VISIBLE_PIXELS = 60
#: Probability that an object (after the first) is placed against one already there.
OCCLUDE_P = 0.5
MAX_ROTATION = _easy.MAX_ROTATION
DISTRACTOR_SHAPES = ("bar", "L", "T", "chevron", "U")
#: class context (0 in the preset; the ``context`` variant): each present class gets, with
#: probability CONTEXT_P, a band along an image edge in that class's own style (colours, stripe
#: angle and period), and with probability CONTEXT_FALSE_P one absent class's band is drawn, so that
#: the context predicts the class without proving it (boats and water in a photo)
CONTEXT_P = 0.0
CONTEXT_FALSE_P = 0.0
CONTEXT_WIDTH = (28.0, 56.0)
CONTEXT_EDGES = ("top", "bottom", "left", "right")

_SS = 4
_STREAM = 0x4A5D


def _ci(name: str) -> int:
    return CLASS_NAMES.index(name)


_PARTNER_OF: dict[int, int] = {}
for _a, _b in PARTNERS:
    _PARTNER_OF[_ci(_a)], _PARTNER_OF[_ci(_b)] = _ci(_b), _ci(_a)
_EXCLUDES: dict[int, set] = {}
for _a, _b in EXCLUSIVE:
    _EXCLUDES.setdefault(_ci(_a), set()).add(_ci(_b))
    _EXCLUDES.setdefault(_ci(_b), set()).add(_ci(_a))


@dataclass(frozen=True)
class HardSceneObject(SceneObject):
    """A :class:`~clrp.scenes.SceneObject` (``mask`` = visible part, ``box`` = its tight box)
    plus ``full_mask`` (the whole shape, hidden part included), ``depth`` (0 = painted first)
    and ``size_class`` ("small", "medium", "large": the nominal size drawn)."""

    full_mask: np.ndarray = field(default=None, repr=False, compare=False)
    depth: int = 0
    size_class: str = ""

    @property
    def hidden(self) -> np.ndarray:
        """Pixels of the shape that objects above it hide."""
        return self.full_mask & ~self.mask

    @property
    def visible_fraction(self) -> float:
        return float(self.mask.sum()) / max(int(self.full_mask.sum()), 1)

    @property
    def box_area(self) -> int:
        x0, y0, x1, y1 = self.box
        return (x1 - x0 + 1) * (y1 - y0 + 1)


@dataclass(frozen=True)
class HardScene(Scene):
    """A hard scene; ``name`` is ``hard_<seed:08d>`` (easy scenes are ``scene_<seed>``)."""

    distractors: tuple = ()  # (shape name, centre x, centre y) of each distractor
    contexts: tuple = ()     # (class name, edge, width, amplitude, wavelength, phase) of each class-context band

    @property
    def name(self) -> str:
        return f"hard_{self.seed:08d}" if self.seed is not None else "hard"


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM, stream]))


# --------------------------------------------------------------------------------------------
# Class sets and their co-occurrence


def _allowed(chosen: list[int]) -> list[int]:
    return [c for c in range(NUM_CLASSES)
            if c not in chosen and not any(c in _EXCLUDES.get(d, ()) for d in chosen)]


def sample_classes(rng: np.random.Generator) -> list[int]:
    """Draw a scene's class indices (distinct; in the order drawn), see the module docstring."""
    n = int(rng.choice([2, 3, 4, 5], p=OBJECT_COUNT_P))
    chosen: list[int] = []
    while len(chosen) < n:
        allowed = _allowed(chosen)
        c = allowed[int(rng.integers(len(allowed)))]
        chosen.append(c)
        p = _PARTNER_OF.get(c)
        if p is not None and p not in chosen and len(chosen) < n:
            if rng.random() < PARTNER_P:
                chosen.append(p)
    return chosen


def scene_classes(seed: int) -> list[int]:
    """The class indices of ``generate_scene(seed)`` (sorted), without generating it."""
    return sorted(sample_classes(_rng(seed, 0)))


@lru_cache(maxsize=1)
def class_statistics() -> dict:
    """Exact probabilities under :func:`sample_classes`, by enumerating every path of the
    sampling process: ``{"class": P[C] (P that class c is present), "pair": P[C, C] (both
    present; diagonal = ``class``), "n_objects": {n: P}}`` (numpy arrays, class-index order)."""
    pc = np.zeros(NUM_CLASSES)
    pp = np.zeros((NUM_CLASSES, NUM_CLASSES))
    pn: dict[int, float] = {}

    def walk(chosen: list[int], n: int, prob: float):
        if len(chosen) >= n:
            idx = np.array(chosen)
            pc[idx] += prob
            pp[np.ix_(idx, idx)] += prob
            pn[n] = pn.get(n, 0.0) + prob
            return
        allowed = _allowed(chosen)
        for c in allowed:
            q = prob / len(allowed)
            p = _PARTNER_OF.get(c)
            if p is not None and p not in chosen and len(chosen) + 1 < n:
                walk(chosen + [c, p], n, q * PARTNER_P)
                walk(chosen + [c], n, q * (1 - PARTNER_P))
            else:
                walk(chosen + [c], n, q)

    for n, p in zip((2, 3, 4, 5), OBJECT_COUNT_P):
        walk([], n, p)
    return {"class": pc, "pair": pp, "n_objects": pn}


# --------------------------------------------------------------------------------------------
# Geometry


def _distractor_ops(name: str, rng: np.random.Generator) -> list[tuple]:
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


def _render(ops: list[tuple], cx: float, cy: float, sx: float, sy: float, angle_deg: float, flip: bool,
            size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] (float32 ``size x size``), rendered in a window around the
    shape only (the easy preset renders the whole image at 4x)."""
    rad = math.ceil(math.hypot(sx, sy)) + 2
    x0, y0 = max(0, int(math.floor(cx)) - rad), max(0, int(math.floor(cy)) - rad)
    x1, y1 = min(size, int(math.floor(cx)) + rad + 1), min(size, int(math.floor(cy)) + rad + 1)
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


def _size_class(rng: np.random.Generator) -> tuple[str, float]:
    u = rng.random()
    acc = 0.0
    for name, p, lo, hi in SIZE_CATEGORIES:
        acc += p
        if u < acc or name == SIZE_CATEGORIES[-1][0]:
            return name, float(rng.uniform(lo, hi))
    raise AssertionError  # pragma: no cover


@dataclass
class _Placed:
    ci: int
    cov: np.ndarray       # full coverage of the shape
    size_class: str
    cx: float
    cy: float
    r: float              # nominal radius


def _visible(placed: list[_Placed]) -> list[np.ndarray]:
    """Visible coverage of each placed shape (painted in list order, later on top)."""
    out = []
    above = np.ones_like(placed[0].cov) if placed else None
    for p in reversed(placed):
        out.append(p.cov * above)
        above = above * (1.0 - p.cov)
    return out[::-1]


def _masks(covs: list[np.ndarray]) -> list[np.ndarray]:
    """Visible masks: a pixel belongs to the topmost object whose coverage there is >= 0.5 (so an
    object's hidden part ``full & ~mask`` lies exactly under the masks of objects above it)."""
    taken = None
    out: list[np.ndarray] = []
    for c in reversed(covs):
        m = c >= 0.5
        if taken is None:
            taken = np.zeros_like(m)
        v = m & ~taken
        taken |= m
        out.append(v)
    return out[::-1]


def _acceptable(placed: list[_Placed]) -> bool:
    for p, m in zip(placed, _masks([q.cov for q in placed])):
        full = int((p.cov >= 0.5).sum())
        k = int(m.sum())
        if k < MIN_VISIBLE_PIXELS or k < MIN_VISIBLE_FRACTION * full:
            return False
    return True


def _place_objects(rng: np.random.Generator, order: list[int], size: int) -> list[_Placed]:
    placed: list[_Placed] = []
    for ci in order:
        name = CLASS_NAMES[ci]
        ops = _easy._shape_ops(name, rng)
        flip = bool(rng.random() < 0.5) if name in ("crescent", "arrow") else False
        against = bool(placed) and rng.random() < OCCLUDE_P
        ok = None
        for attempt in range(80):
            if attempt == 60:
                against = False  # give up on touching; shrink to the small range below
            cat, obj = _size_class(rng)
            if attempt >= 40:
                cat, obj = SIZE_CATEGORIES[0][0], float(rng.uniform(SIZE_CATEGORIES[0][2], SIZE_CATEGORIES[0][3]))
            aspect = rng.uniform(0.8, 1.25)
            sx, sy = obj / 2 * math.sqrt(aspect), obj / 2 / math.sqrt(aspect)
            ang = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
            margin = max(sx, sy) + 1
            if against:
                other = placed[int(rng.integers(len(placed)))]
                d = (other.r + max(sx, sy)) * rng.uniform(0.5, 1.0)
                phi = rng.uniform(0, 2 * math.pi)
                cx = float(np.clip(other.cx + d * math.cos(phi), margin, size - margin))
                cy = float(np.clip(other.cy + d * math.sin(phi), margin, size - margin))
            else:
                cx = float(rng.uniform(margin, size - margin))
                cy = float(rng.uniform(margin, size - margin))
            cov = _render(ops, cx, cy, sx, sy, ang, flip, size)
            cand = _Placed(ci, cov, cat, cx, cy, max(sx, sy))
            if _acceptable(placed + [cand]):
                ok = cand
                break
        if ok is None:  # last resort: the smallest object at the least occupied grid point
            obj = SIZE_CATEGORIES[0][2]
            best = None
            for gy in range(16, size - 16, 8):
                for gx in range(16, size - 16, 8):
                    cov = _render(ops, gx, gy, obj / 2, obj / 2, 0.0, flip, size)
                    cand = _Placed(ci, cov, SIZE_CATEGORIES[0][0], float(gx), float(gy), obj / 2)
                    if _acceptable(placed + [cand]):
                        best = cand
                        break
                if best is not None:
                    break
            if best is None:  # pragma: no cover - never observed
                raise RuntimeError(f"cannot place {name}")
            ok = best
        placed.append(ok)
    return placed


def generate_layout(seed: int, size: int = SCENE_SIZE) -> list[HardSceneObject]:
    """The objects of ``generate_scene(seed)`` (classes, masks, boxes, depth), without painting."""
    return _layout(seed, size)[0]


def _layout(seed: int, size: int) -> tuple[list[HardSceneObject], list[np.ndarray]]:
    seed = int(seed)
    classes = sample_classes(_rng(seed, 0))
    rng = _rng(seed, 1)
    order = [classes[i] for i in rng.permutation(len(classes))]
    placed = _place_objects(rng, order, size)
    vis = _visible(placed)
    masks = _masks([p.cov for p in placed])
    objects: list[HardSceneObject] = []
    for depth, (p, m) in enumerate(zip(placed, masks)):
        ys, xs = np.nonzero(m)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        objects.append(HardSceneObject(CLASS_NAMES[p.ci], p.ci, box, m, full_mask=p.cov >= 0.5,
                                       depth=depth, size_class=p.size_class))
    return objects, vis


# --------------------------------------------------------------------------------------------
# Painting


def _colour(rng: np.random.Generator, local_mean: np.ndarray, min_contrast: float = 70.0) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.integers(0, 256, size=3).astype(np.float32)
        d = float(np.linalg.norm(c - local_mean))
        if d > min_contrast:
            return c
        if d > best_d:
            best, best_d = c, d
    diff = best - local_mean
    n = float(np.linalg.norm(diff)) or 1.0
    return np.clip(local_mean + diff / n * (min_contrast + 20), 0, 255)


def _texture(rng: np.random.Generator, colour: np.ndarray, ya: int, yb: int, xa: int, xb: int, size: int) -> np.ndarray:
    """A surface texture for an object or a distractor (one shared distribution): flat with
    shading, stripes, checks, speckle or a two-colour gradient."""
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32)
    kind = int(rng.choice(5, p=[0.3, 0.2, 0.15, 0.15, 0.2]))
    ang = rng.uniform(0, 2 * math.pi)
    u = (math.cos(ang) * xx + math.sin(ang) * yy)
    second = np.clip(colour + rng.normal(0, 1, 3) * rng.uniform(40, 90), 0, 255).astype(np.float32)
    if kind == 0:
        tex = colour[None, None, :] + (u / size)[..., None] * rng.uniform(-50, 50)
    elif kind == 1:
        period = rng.uniform(4, 10)
        s = (np.sin(u * 2 * math.pi / period) > 0).astype(np.float32)[..., None]
        tex = colour * (1 - s) + second * s
    elif kind == 2:
        period = rng.uniform(4, 9)
        v = (-math.sin(ang) * xx + math.cos(ang) * yy)
        s = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)[..., None]
        tex = colour * (1 - s) + second * s
    elif kind == 3:
        tex = colour[None, None, :] + rng.normal(0, rng.uniform(15, 35), size=(yb - ya, xb - xa, 3)).astype(np.float32)
    else:
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
        tex = colour * (1 - t[..., None]) + second * t[..., None]
    tex = tex + rng.normal(0, rng.uniform(2, 8), size=tex.shape).astype(np.float32)
    return np.clip(tex, 0, 255)


def _composite(img: np.ndarray, cov: np.ndarray, rng: np.random.Generator, min_contrast: float) -> None:
    ys, xs = np.nonzero(cov > 0)
    if len(ys) == 0:
        return
    ya, yb, xa, xb = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    a = cov[ya:yb, xa:xb, None]
    local = (img[ya:yb, xa:xb] * a).sum((0, 1)) / max(float(a.sum()), 1e-6)
    tex = _texture(rng, _colour(rng, local, min_contrast), ya, yb, xa, xb, img.shape[0])
    img[ya:yb, xa:xb] = img[ya:yb, xa:xb] * (1 - a) + tex * a


def _context_style(ci: int) -> tuple:
    """A class's context style: two colours of its own hue, stripe angle and period (fixed)."""
    import colorsys

    hue = (ci * 0.37) % 1.0
    c1 = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9), dtype=np.float32) * 255
    c2 = np.array(colorsys.hsv_to_rgb(hue, 0.45, 0.45), dtype=np.float32) * 255
    return c1, c2, math.radians(ci * 18.0), 5.0 + (ci % 4) * 1.5


def _band_alpha(edge: str, width: float, amp: float, wavelength: float, phase: float, size: int) -> np.ndarray:
    """Coverage [0, 1] (``size x size``) of a context band with a wavy inner edge."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    along, depth = {"top": (xx, yy), "bottom": (xx, size - 1 - yy),
                    "left": (yy, xx), "right": (yy, size - 1 - xx)}[edge]
    inner = width + amp * np.sin(along * 2 * math.pi / wavelength + phase)
    return np.clip((inner - depth) / 2.0, 0.0, 1.0)


def _paint_contexts(rng: np.random.Generator, img: np.ndarray, present: list[int], size: int) -> tuple:
    """Class-context bands with a wavy inner edge (water, grass, road), see :data:`CONTEXT_P`."""
    drawn = [c for c in present if rng.random() < CONTEXT_P]
    absent = [c for c in range(NUM_CLASSES) if c not in present]
    if absent and rng.random() < CONTEXT_FALSE_P:
        drawn.append(absent[int(rng.integers(len(absent)))])
    out = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    edges = rng.permutation(len(CONTEXT_EDGES))
    for i, c in enumerate(drawn):
        band = (CONTEXT_EDGES[int(edges[i % len(edges)])], round(float(rng.uniform(*CONTEXT_WIDTH)), 2),
                round(float(rng.uniform(3, 8)), 3), round(float(rng.uniform(40, 90)), 3),
                round(float(rng.uniform(0, 2 * math.pi)), 4))
        a = _band_alpha(*band, size)[..., None]
        c1, c2, ang, period = _context_style(c)
        u = math.cos(ang) * xx + math.sin(ang) * yy
        stripes = (np.sin(u * 2 * math.pi / period) > 0).astype(np.float32)[..., None]
        img[:] = img * (1 - a) + (c1 * (1 - stripes) + c2 * stripes) * a
        out.append((CLASS_NAMES[c], *band))
    return tuple(out)


def context_masks(scene: "HardScene") -> dict[str, np.ndarray]:
    """Where each class's context band is (coverage >= 0.5, objects on top included): ``{class name:
    bool mask}`` (empty for the preset's scenes, which have no bands)."""
    size = scene.image.shape[0]
    out: dict[str, np.ndarray] = {}
    for name, *band in scene.contexts:
        m = _band_alpha(*band, size) >= 0.5
        out[name] = out[name] | m if name in out else m
    return out


def _structured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    img = _easy._background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ang = rng.uniform(0, math.pi)
    u = math.cos(ang) * xx + math.sin(ang) * yy
    v = -math.sin(ang) * xx + math.cos(ang) * yy
    kind = int(rng.integers(6))
    c1, c2 = (rng.integers(0, 256, size=3).astype(np.float32) for _ in range(2))
    alpha = rng.uniform(0.25, 0.6)
    if kind == 0:  # bands of varying width
        edges = np.cumsum(rng.uniform(8, 40, size=40))
        s = (np.searchsorted(edges, u - u.min()) % 2).astype(np.float32)
    elif kind == 1:  # soft checks
        p = rng.uniform(10, 30)
        s = 0.5 + 0.5 * np.sin(u * 2 * math.pi / p) * np.sin(v * 2 * math.pi / p)
    elif kind == 2:  # bricks (axis-aligned), mortar lines
        bh = rng.uniform(8, 20)
        bw = bh * rng.uniform(1.8, 3.0)
        row = np.floor(yy / bh)
        xo = xx + (row % 2) * bw / 2
        s = ((yy % bh < 2) | (xo % bw < 2)).astype(np.float32)
    elif kind == 3:  # grid of thin lines
        p = rng.uniform(10, 28)
        s = ((u % p < 1.5) | (v % p < 1.5)).astype(np.float32)
    elif kind == 4:  # waves
        p = rng.uniform(12, 36)
        s = 0.5 + 0.5 * np.sin((u + rng.uniform(4, 14) * np.sin(v * 2 * math.pi / rng.uniform(30, 90))) * 2 * math.pi / p)
    else:  # plaid
        p1, p2 = rng.uniform(10, 30, size=2)
        s = 0.5 * ((np.sin(u * 2 * math.pi / p1) > 0.3).astype(np.float32) + (np.sin(v * 2 * math.pi / p2) > 0.3))
    pat = c1[None, None] * (1 - s[..., None]) + c2[None, None] * s[..., None]
    return img * (1 - alpha) + pat * alpha


def _paint(seed: int, objects: list[HardSceneObject], vis: list[np.ndarray], size: int):
    rng = _rng(seed, 2)
    img = _structured_background(rng, size)
    contexts = ()
    if CONTEXT_P > 0 or CONTEXT_FALSE_P > 0:   # its own stream: the rest of the scene draws as without
        contexts = _paint_contexts(_rng(seed, 3), img, sorted({o.class_index for o in objects}), size)
    # distractor shapes: no class, same colour/texture distributions, below the objects
    distractors = []
    for _ in range(int(rng.integers(1, 5))):
        shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        ops = _distractor_ops(shape, rng)
        _, obj = _size_class(rng)
        aspect = rng.uniform(0.8, 1.25)
        sx, sy = obj / 2 * math.sqrt(aspect), obj / 2 / math.sqrt(aspect)
        margin = max(sx, sy) * 0.6
        cx, cy = (float(rng.uniform(margin, size - margin)) for _ in range(2))
        cov = _render(ops, cx, cy, sx, sy, float(rng.uniform(0, 360)), False, size)
        _composite(img, cov, rng, 55.0)
        distractors.append((shape, round(cx, 1), round(cy, 1)))
    layer, alpha = _easy._distractors(rng, size)  # strokes, open arcs and dots
    al = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0 * rng.uniform(0.5, 1.0)
    img = img * (1 - al) + np.asarray(layer, dtype=np.float32) * al
    img += rng.normal(0, rng.uniform(3, 12), size=img.shape).astype(np.float32)
    img = np.clip(img, 0, 255)
    # the objects, bottom to top, with their visible coverage
    for v in vis:
        _composite(img, v, rng, 70.0)
    img += rng.normal(0, rng.uniform(1, 5), size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), tuple(distractors), contexts


def generate_scene(seed: int, size: int = SCENE_SIZE) -> HardScene:
    """One hard scene, a pure function of ``seed``."""
    objects, vis = _layout(seed, size)
    image, distractors, contexts = _paint(int(seed), objects, vis, size)
    return HardScene(image=image, objects=list(objects), seed=int(seed), distractors=distractors, contexts=contexts)


def iter_scenes(n: int, seed: int = 0, size: int = SCENE_SIZE) -> Iterable[HardScene]:
    """Scenes with seeds ``seed, seed + 1, ..., seed + n - 1``."""
    for i in range(int(n)):
        yield generate_scene(int(seed) + i, size=size)


def generate_dataset(n: int, seed: int = 0, size: int = SCENE_SIZE) -> list[HardScene]:
    return list(iter_scenes(n, seed, size))


# --------------------------------------------------------------------------------------------
# World variants, for experiments only (headroom probes, models trained on a changed world): the
# ``scenes-hard`` preset is what the constants above say; a variant overrides some of them for a
# while, in this process and in processes forked inside it. Not thread-safe: scripts, not servers.

VARIANTS: dict[str, dict] = {
    "shipped": {},
    "apart": {"OCCLUDE_P": 0.0},                                      # no object placed against another
    "crowded": {"OBJECT_COUNT_P": (0.0, 0.0, 0.0, 1.0)},              # 5 objects in every scene
    "partners": {"PARTNER_P": 1.0},      # a partner class comes with its partner whenever the scene has room
    "small": {"SIZE_CATEGORIES": (("small", 1.0, 20.0, 44.0),)},      # every object small
    "context": {"CONTEXT_P": 0.8, "CONTEXT_FALSE_P": 0.3},             # class-context bands along the edges
}


_PRESET = {k: globals()[k] for v in VARIANTS.values() for k in v}


@contextmanager
def variant(name: str):
    """``with variant("partners"): ...`` generates scenes of that world variant (:data:`VARIANTS`;
    the others' changes are undone inside, so ``variant("shipped")`` is always the preset); the
    constants are restored on exit, also after an error."""
    if name not in VARIANTS:
        raise ValueError(f"unknown world variant {name!r}; known: {', '.join(VARIANTS)}")
    g = globals()
    saved = {k: g[k] for k in _PRESET}
    try:
        g.update(_PRESET)
        g.update(VARIANTS[name])
        class_statistics.cache_clear()
        yield dict(VARIANTS[name])
    finally:
        g.update(saved)
        class_statistics.cache_clear()


if __name__ == "__main__":  # pragma: no cover
    from .scenes import export_main

    export_main(scenes_from=iter_scenes, folder_name="CLRPHardScenes",
                description="Generate hard procedural scenes and export them as VOC")
