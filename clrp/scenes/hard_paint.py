"""Painting of the hard scene world (:mod:`clrp.scenes.hard`): structured backgrounds, class-less
distractor shapes, class-context bands and the objects' colours and textures."""
from __future__ import annotations

import math

import numpy as np

from .backgrounds import background, contrasting_colour, strokes
from .shapes import CLASS_NAMES, DISTRACTOR_SHAPES, NUM_CLASSES, coverage, distractor_ops

#: a class-context band: its depth range (px) and the image edges it lies along
CONTEXT_WIDTH = (28.0, 56.0)
CONTEXT_EDGES = ("top", "bottom", "left", "right")


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
    tex = _texture(rng, contrasting_colour(rng, local, min_contrast, min_contrast + 20), ya, yb, xa, xb, img.shape[0])
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


def _paint_contexts(rng: np.random.Generator, img: np.ndarray, present: list[int], size: int, world) -> tuple:
    """Class-context bands with a wavy inner edge (water, grass, road), see
    :data:`clrp.scenes.hard.CONTEXT_P`."""
    drawn = [c for c in present if rng.random() < world.context_p]
    absent = [c for c in range(NUM_CLASSES) if c not in present]
    if absent and rng.random() < world.context_false_p:
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


def context_masks(scene) -> dict[str, np.ndarray]:
    """Where each class's context band is (coverage >= 0.5, objects on top included): ``{class name:
    bool mask}`` (empty for the preset's scenes, which have no bands)."""
    size = scene.image.shape[0]
    out: dict[str, np.ndarray] = {}
    for name, *band in scene.contexts:
        m = _band_alpha(*band, size) >= 0.5
        out[name] = out[name] | m if name in out else m
    return out


def _structured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    img = background(rng, size)
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


def paint(rng: np.random.Generator, context_rng: np.random.Generator, objects: list, vis: list[np.ndarray],
          size: int, world) -> tuple:
    """The image of a laid-out hard scene of ``world`` (a :class:`clrp.scenes.hard.HardWorld`):
    ``(uint8 image, distractors, context bands)``; ``vis`` = each object's visible coverage."""
    img = _structured_background(rng, size)
    contexts = ()
    if world.context_p > 0 or world.context_false_p > 0:   # its own stream: the rest of the scene draws as without
        contexts = _paint_contexts(context_rng, img, sorted({o.class_index for o in objects}), size, world)
    # distractor shapes: no class, same colour/texture distributions, below the objects
    distractors = []
    for _ in range(int(rng.integers(1, 5))):
        shape = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        ops = distractor_ops(shape, rng)
        _, obj = world.draw_size(rng)
        aspect = rng.uniform(0.8, 1.25)
        sx, sy = obj / 2 * math.sqrt(aspect), obj / 2 / math.sqrt(aspect)
        margin = max(sx, sy) * 0.6
        cx, cy = (float(rng.uniform(margin, size - margin)) for _ in range(2))
        cov = coverage(ops, cx, cy, sx, sy, float(rng.uniform(0, 360)), False, size)
        _composite(img, cov, rng, 55.0)
        distractors.append((shape, round(cx, 1), round(cy, 1)))
    layer, alpha = strokes(rng, size)  # strokes, open arcs and dots
    al = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0 * rng.uniform(0.5, 1.0)
    img = img * (1 - al) + np.asarray(layer, dtype=np.float32) * al
    img += rng.normal(0, rng.uniform(3, 12), size=img.shape).astype(np.float32)
    img = np.clip(img, 0, 255)
    # the objects, bottom to top, with their visible coverage
    for v in vis:
        _composite(img, v, rng, 70.0)
    img += rng.normal(0, rng.uniform(1, 5), size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), tuple(distractors), contexts


