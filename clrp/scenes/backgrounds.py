"""Backgrounds and clutter both scene worlds paint: a colour gradient with low-frequency blotches
and stripes (:func:`background`) and random strokes, open arcs and dots (:func:`strokes`)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def contrasting_colour(rng: np.random.Generator, local_mean: np.ndarray, min_contrast: float, push: float) -> np.ndarray:
    """A random colour farther than ``min_contrast`` from ``local_mean`` (up to 12 draws), else the
    farthest draw moved to ``push`` from it."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = random_colour(rng)
        d = float(np.linalg.norm(c - local_mean))
        if d > min_contrast:
            return c
        if d > best_d:
            best, best_d = c, d
    diff = best - local_mean
    n = float(np.linalg.norm(diff)) or 1.0
    return np.clip(local_mean + diff / n * push, 0, 255)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    # linear gradient between two colours in a random direction
    a = rng.uniform(0, 2 * math.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = random_colour(rng), random_colour(rng)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    # low-frequency blotches: upsampled coarse noise
    coarse = rng.normal(0, 1, size=(6, 6, 3)).astype(np.float32)
    lf = np.asarray(Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8))
                    .resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) - 127.5
    img += lf * rng.uniform(0.1, 0.45)
    # stripes / checker texture (sometimes)
    if rng.random() < 0.5:
        period = rng.uniform(5, 16)
        ang = rng.uniform(0, math.pi)
        s = np.sin((np.cos(ang) * xx + np.sin(ang) * yy) * size * 2 * math.pi / period)
        if rng.random() < 0.3:
            s = s * np.sin((np.cos(ang + math.pi / 2) * xx + np.sin(ang + math.pi / 2) * yy) * size * 2 * math.pi / period)
        img += (s[..., None] * rng.uniform(8, 30) * rng.choice([-1, 1], size=3)).astype(np.float32)
    return img


def strokes(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    """Random strokes and dots, as an RGB layer and its alpha (L)."""
    layer = Image.new("RGB", (size * 2, size * 2), (0, 0, 0))
    alpha = Image.new("L", (size * 2, size * 2), 0)
    dl, da = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for _ in range(int(rng.integers(2, 9))):
        col = tuple(int(c) for c in rng.integers(0, 256, size=3))
        w = int(rng.integers(1, 5)) * 2
        kind = rng.random()
        if kind < 0.55:  # polyline / scribble
            n = int(rng.integers(2, 6))
            pts = [tuple(float(v) for v in rng.uniform(-10, size * 2 + 10, size=2))]
            for _ in range(n - 1):
                step = rng.normal(0, size * 0.5, size=2)
                pts.append((pts[-1][0] + float(step[0]), pts[-1][1] + float(step[1])))
            dl.line(pts, fill=col, width=w, joint="curve")
            da.line(pts, fill=255, width=w, joint="curve")
        elif kind < 0.8:  # arc (open: never a full ring)
            cx, cy = rng.uniform(0, size * 2, size=2)
            r = rng.uniform(size * 0.15, size * 0.8)
            start = rng.uniform(0, 360)
            ext = rng.uniform(40, 200)
            bb = [float(cx - r), float(cy - r), float(cx + r), float(cy + r)]
            dl.arc(bb, start, start + ext, fill=col, width=w)
            da.arc(bb, start, start + ext, fill=255, width=w)
        else:  # sprinkle of small dots
            for _ in range(int(rng.integers(5, 25))):
                x, y = rng.uniform(0, size * 2, size=2)
                r = rng.uniform(1, 3)
                bb = [float(x - r), float(y - r), float(x + r), float(y + r)]
                dl.ellipse(bb, fill=col)
                da.ellipse(bb, fill=255)
    return layer.resize((size, size), Image.Resampling.BOX), alpha.resize((size, size), Image.Resampling.BOX)
