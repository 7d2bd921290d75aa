"""The *hard* scene preset: a procedural world with the headroom of a real benchmark.

The easy preset (:mod:`clrp.scenes.easy`, 128 px, 1-3 well separated high-contrast objects) saturates
the Pointing Game: every explanation method scores ~1.0 there. This preset keeps the same ten
shape classes (:data:`clrp.scenes.shapes.CLASS_NAMES`), the same :class:`~clrp.scenes.shapes.SceneObject`
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
(geometry and masks, no painting) agree exactly with :func:`generate_scene`. The painting is
:mod:`clrp.scenes.hard_paint`.

World variants (:data:`VARIANTS`: :class:`HardWorld` values passed as ``world=`` to the generator;
:data:`PRESET` is the preset) change some of the constants above, for experiments on where the
Pointing Game's headroom comes from (``scripts/research/headroom_probe.py``, ``scripts/assets/train_hard_model.py
--variant``): objects apart, crowded scenes, partners whenever there is room, only small objects,
or *class context* (bands along the image edges in a style that predicts
a class without proving it, as water predicts a boat); the preset itself draws none of them.

Seeds follow the easy preset's convention: training < 10,000,000, held-out 10,000,000+,
metrics 20,000,000+, evaluation (``scenes-hard:N``, ``make_results.py``) 30,000,000+.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Iterable

import numpy as np

from .hard_paint import context_masks, paint
from .shapes import CLASS_NAMES, FLIPPABLE, MAX_ROTATION, NUM_CLASSES, Scene, SceneObject, coverage, shape_ops

__all__ = [
    "CLASS_NAMES",
    "SCENE_SIZE",
    "SMALL_AREA",
    "PARTNERS",
    "EXCLUSIVE",
    "PARTNER_P",
    "OBJECT_COUNT_P",
    "HardWorld",
    "PRESET",
    "HardScene",
    "HardSceneObject",
    "sample_classes",
    "scene_classes",
    "class_statistics",
    "generate_layout",
    "generate_scene",
    "generate_dataset",
    "iter_scenes",
    "VARIANTS",
    "world_variant",
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
#: class context (0 in the preset; the ``context`` variant): each present class gets, with
#: probability CONTEXT_P, a band along an image edge in that class's own style (colours, stripe
#: angle and period), and with probability CONTEXT_FALSE_P one absent class's band is drawn, so that
#: the context predicts the class without proving it (boats and water in a photo)
CONTEXT_P = 0.0
CONTEXT_FALSE_P = 0.0

_STREAM = 0x4A5D


@dataclass(frozen=True)
class HardWorld:
    """The constants a world variant may change (defaults: the ``scenes-hard`` preset, :data:`PRESET`).
    A value object: pass it as ``world=`` to the generator; nothing global changes, so several
    worlds can be generated at once (threads, servers)."""

    object_count_p: tuple = OBJECT_COUNT_P
    size_categories: tuple = SIZE_CATEGORIES
    partner_p: float = PARTNER_P
    occlude_p: float = OCCLUDE_P
    context_p: float = CONTEXT_P
    context_false_p: float = CONTEXT_FALSE_P

    def draw_size(self, rng: np.random.Generator) -> tuple[str, float]:
        """A size category and a nominal object size in it."""
        u = rng.random()
        acc = 0.0
        for name, p, lo, hi in self.size_categories:
            acc += p
            if u < acc or name == self.size_categories[-1][0]:
                return name, float(rng.uniform(lo, hi))
        raise AssertionError  # pragma: no cover

    def changes(self) -> dict:
        """The values that differ from the preset, named as the module constants they replace
        (``{"OCCLUDE_P": 0.0}``: the form the shipped variant models' metadata records)."""
        return {f.name.upper(): getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(PRESET, f.name)}


#: The ``scenes-hard`` preset.
PRESET = HardWorld()
#: World variants, for experiments only (headroom probes, models trained on a changed world).
VARIANTS: dict[str, HardWorld] = {
    "shipped": PRESET,
    "apart": replace(PRESET, occlude_p=0.0),                           # no object placed against another
    "crowded": replace(PRESET, object_count_p=(0.0, 0.0, 0.0, 1.0)),   # 5 objects in every scene
    "partners": replace(PRESET, partner_p=1.0),   # a partner class comes with its partner whenever the scene has room
    "small": replace(PRESET, size_categories=(("small", 1.0, 20.0, 44.0),)),   # every object small
    "context": replace(PRESET, context_p=0.8, context_false_p=0.3),    # class-context bands along the edges
}


def world_variant(name: str) -> HardWorld:
    """The world variant ``name`` (:data:`VARIANTS`); ``ValueError`` naming the known ones."""
    if name not in VARIANTS:
        raise ValueError(f"unknown world variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


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
    """A :class:`~clrp.scenes.shapes.SceneObject` (``mask`` = visible part, ``box`` = its tight box)
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


def sample_classes(rng: np.random.Generator, world: HardWorld = PRESET) -> list[int]:
    """Draw a scene's class indices (distinct; in the order drawn), see the module docstring."""
    n = int(rng.choice([2, 3, 4, 5], p=world.object_count_p))
    chosen: list[int] = []
    while len(chosen) < n:
        allowed = _allowed(chosen)
        c = allowed[int(rng.integers(len(allowed)))]
        chosen.append(c)
        p = _PARTNER_OF.get(c)
        if p is not None and p not in chosen and len(chosen) < n:
            if rng.random() < world.partner_p:
                chosen.append(p)
    return chosen


def scene_classes(seed: int, world: HardWorld = PRESET) -> list[int]:
    """The class indices of ``generate_scene(seed, world=world)`` (sorted), without generating it."""
    return sorted(sample_classes(_rng(seed, 0), world))


@lru_cache(maxsize=8)
def class_statistics(world: HardWorld = PRESET) -> dict:
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
                walk(chosen + [c, p], n, q * world.partner_p)
                walk(chosen + [c], n, q * (1 - world.partner_p))
            else:
                walk(chosen + [c], n, q)

    for n, p in zip((2, 3, 4, 5), world.object_count_p):
        walk([], n, p)
    return {"class": pc, "pair": pp, "n_objects": pn}


# --------------------------------------------------------------------------------------------
# Geometry


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


def _place_objects(rng: np.random.Generator, order: list[int], size: int, world: HardWorld) -> list[_Placed]:
    placed: list[_Placed] = []
    for ci in order:
        name = CLASS_NAMES[ci]
        ops = shape_ops(name, rng)
        flip = bool(rng.random() < 0.5) if name in FLIPPABLE else False
        against = bool(placed) and rng.random() < world.occlude_p
        ok = None
        for attempt in range(80):
            if attempt == 60:
                against = False  # give up on touching; shrink to the small range below
            cat, obj = world.draw_size(rng)
            if attempt >= 40:
                small = world.size_categories[0]
                cat, obj = small[0], float(rng.uniform(small[2], small[3]))
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
            cov = coverage(ops, cx, cy, sx, sy, ang, flip, size)
            cand = _Placed(ci, cov, cat, cx, cy, max(sx, sy))
            if _acceptable(placed + [cand]):
                ok = cand
                break
        if ok is None:  # last resort: the smallest object at the least occupied grid point
            obj = world.size_categories[0][2]
            best = None
            for gy in range(16, size - 16, 8):
                for gx in range(16, size - 16, 8):
                    cov = coverage(ops, gx, gy, obj / 2, obj / 2, 0.0, flip, size)
                    cand = _Placed(ci, cov, world.size_categories[0][0], float(gx), float(gy), obj / 2)
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


def generate_layout(seed: int, size: int = SCENE_SIZE, world: HardWorld = PRESET) -> list[HardSceneObject]:
    """The objects of ``generate_scene(seed, size, world)`` (classes, masks, boxes, depth), without painting."""
    return _layout(seed, size, world)[0]


def _layout(seed: int, size: int, world: HardWorld = PRESET) -> tuple[list[HardSceneObject], list[np.ndarray]]:
    seed = int(seed)
    classes = sample_classes(_rng(seed, 0), world)
    rng = _rng(seed, 1)
    order = [classes[i] for i in rng.permutation(len(classes))]
    placed = _place_objects(rng, order, size, world)
    vis = _visible(placed)
    masks = _masks([p.cov for p in placed])
    objects: list[HardSceneObject] = []
    for depth, (p, m) in enumerate(zip(placed, masks)):
        ys, xs = np.nonzero(m)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        objects.append(HardSceneObject(CLASS_NAMES[p.ci], p.ci, box, m, full_mask=p.cov >= 0.5,
                                       depth=depth, size_class=p.size_class))
    return objects, vis


def generate_scene(seed: int, size: int = SCENE_SIZE, world: HardWorld = PRESET) -> HardScene:
    """One hard scene of ``world`` (default: the preset), a pure function of ``seed``."""
    objects, vis = _layout(seed, size, world)
    # painting and context bands draw from their own streams (layout-only callers skip them)
    image, distractors, contexts = paint(_rng(seed, 2), _rng(seed, 3), objects, vis, size, world)
    return HardScene(image=image, objects=list(objects), seed=int(seed), distractors=distractors, contexts=contexts)


def iter_scenes(n: int, seed: int = 0, size: int = SCENE_SIZE, world: HardWorld = PRESET) -> Iterable[HardScene]:
    """Scenes with seeds ``seed, seed + 1, ..., seed + n - 1``."""
    for i in range(int(n)):
        yield generate_scene(int(seed) + i, size=size, world=world)


def generate_dataset(n: int, seed: int = 0, size: int = SCENE_SIZE, world: HardWorld = PRESET) -> list[HardScene]:
    return list(iter_scenes(n, seed, size, world))

