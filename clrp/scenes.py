"""Deterministic procedural multi-object scenes with exact ground truth, and VOC export.

Every scene is a ``SCENE_SIZE`` x ``SCENE_SIZE`` (128 x 128) RGB image holding 1 to 3 objects of
*distinct* classes drawn from :data:`CLASS_NAMES` (10 shape classes), with random colours, sizes,
aspect ratios and small rotations, on a cluttered background (colour gradient, low-frequency
blotches, pixel noise, stripes, distractor strokes and dots). Each object carries its class,
a pixel mask (the pixels where the object is visible, i.e. its anti-aliased coverage >= 0.5)
and a box which is exactly the tight bounding box of that mask, in 0-based pixel coordinates
``(x0, y0, x1, y1)`` with ``x1``/``y1`` **inclusive**. Object masks never overlap.

The generator is a pure function of the seed: ``generate_scene(s)`` returns byte-identical
images for the same ``s`` on every run and platform (it only uses ``numpy.random.Generator``
(PCG64) and PIL drawing primitives).

Two rules make the shape classes unambiguous: rotations are limited to +-``MAX_ROTATION``
degrees (so ``square`` and ``diamond`` stay distinct), and the ``diamond`` is a rhombus standing
on a vertex.

VOC export (:func:`export_voc`) writes ``JPEGImages/*.jpg``, ``Annotations/*.xml`` (boxes
converted to the VOC convention: 1-based, inclusive), ``ImageSets/Main/<split>.txt`` and, in
addition, lossless ``Masks/<id>_<k>.png`` object masks (one PNG per object, in annotation order),
either into a folder or a ``.zip``.
"""
from __future__ import annotations

import io
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageDraw

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
#: Side of every generated scene, pixels.
SCENE_SIZE = 128
#: Maximum absolute rotation of an object, degrees.
MAX_ROTATION = 20.0
#: Object size (longest side of its nominal bounding square), pixels.
MIN_OBJECT_SIZE = 22
MAX_OBJECT_SIZE = 46
#: Probability of 1, 2 and 3 objects.
OBJECT_COUNT_P = (0.3, 0.4, 0.3)

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


# --------------------------------------------------------------------------------------------
# Shapes: each returns a list of drawing "ops" in unit coordinates (centre 0, extent [-1, 1]).
# An op is ("poly", points, fill) or ("ellipse", (cx, cy, rx, ry), fill); fill 1 draws, 0 erases.


def _regular(n: int, r: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _shape_ops(name: str, rng: np.random.Generator) -> list[tuple]:
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
    if name == "diamond":
        return [("poly", [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)], 1)]
    if name == "crescent":
        off = float(rng.uniform(0.45, 0.6))
        return [("ellipse", (0.0, 0.0, 1.0, 1.0), 1), ("ellipse", (off, -0.12, 0.85, 0.85), 0)]
    if name == "arrow":
        s = float(rng.uniform(0.22, 0.3))
        return [("poly", [(-1, -s), (0.15, -s), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, s), (-1, s)], 1)]
    raise ValueError(f"unknown shape {name!r}")


def _render_mask(ops: list[tuple], cx: float, cy: float, sx: float, sy: float, angle_deg: float,
                 flip: bool, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the shape, float32 size x size."""
    big = size * _SS
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)

    def tr(x: float, y: float) -> tuple[float, float]:
        if flip:
            x = -x
        x, y = x * sx, y * sy
        return ((cx + x * ca - y * sa) * _SS, (cy + x * sa + y * ca) * _SS)

    for op in ops:
        fill = 255 if op[2] else 0
        if op[0] == "poly":
            draw.polygon([tr(x, y) for x, y in op[1]], fill=fill)
        else:
            ex, ey, rx, ry = op[1]
            pts = [(ex + rx * math.cos(2 * math.pi * k / 96), ey + ry * math.sin(2 * math.pi * k / 96)) for k in range(96)]
            draw.polygon([tr(x, y) for x, y in pts], fill=fill)
    small = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Background


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    # linear gradient between two colours in a random direction
    a = rng.uniform(0, 2 * math.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = _random_colour(rng), _random_colour(rng)
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


def _distractors(rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
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


# --------------------------------------------------------------------------------------------


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation with a (2r+1) x (2r+1) square."""
    h, w = mask.shape
    p = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def _object_colour(rng: np.random.Generator, local_mean: np.ndarray) -> np.ndarray:
    """A random colour with a minimum contrast to the local background."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = _random_colour(rng)
        d = float(np.linalg.norm(c - local_mean))
        if d > 110:
            return c
        if d > best_d:
            best, best_d = c, d
    # push the best candidate away from the background
    diff = best - local_mean
    n = float(np.linalg.norm(diff)) or 1.0
    return np.clip(local_mean + diff / n * 140.0, 0, 255)


def generate_scene(seed: int, size: int = SCENE_SIZE, n_objects: int | None = None) -> Scene:
    """Generate one scene, a pure function of ``seed`` (and ``size``/``n_objects``)."""
    seed = int(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC1A5]))
    img = _background(rng, size)
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
        ops = _shape_ops(name, rng)
        for attempt in range(60):
            obj = rng.uniform(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE) * scale
            aspect = rng.uniform(0.8, 1.25)
            sx, sy = obj / 2 * math.sqrt(aspect), obj / 2 / math.sqrt(aspect)
            ang = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
            flip = bool(rng.random() < 0.5) if name in ("crescent", "arrow") else False
            margin = max(sx, sy) + 1
            cx = rng.uniform(margin, size - margin)
            cy = rng.uniform(margin, size - margin)
            cov = _render_mask(ops, cx, cy, sx, sy, ang, flip, size)
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
    layer, alpha = _distractors(rng, size)
    al = np.asarray(alpha, dtype=np.float32)[..., None] / 255.0
    img = img * (1 - al) + np.asarray(layer, dtype=np.float32) * al
    img += rng.normal(0, rng.uniform(3, 14), size=img.shape).astype(np.float32)
    img = np.clip(img, 0, 255)

    objects: list[SceneObject] = []
    for ci, cov, mask in placed:
        local = img[mask].mean(axis=0)
        colour = _object_colour(rng, local)
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


# --------------------------------------------------------------------------------------------
# PASCAL VOC export


def scene_to_voc_xml(scene: Scene, filename: str, folder: str = "CLRPScenes") -> str:
    """VOC annotation XML for ``scene`` (boxes 1-based inclusive)."""
    h, w = scene.image.shape[:2]
    parts = [
        "<annotation>",
        f"  <folder>{escape(folder)}</folder>",
        f"  <filename>{escape(filename)}</filename>",
        "  <source><database>clrp procedural scenes</database></source>",
        f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for o in scene.objects:
        x0, y0, x1, y1 = o.box
        parts += [
            "  <object>",
            f"    <name>{escape(o.class_name)}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            "    <difficult>0</difficult>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def export_voc(scenes: Sequence[Scene] | Iterable[Scene], dest: str | os.PathLike, split: str = "test", *,
               masks: bool = True, jpeg_quality: int = 95, folder_name: str = "CLRPScenes") -> Path:
    """Write ``scenes`` as a PASCAL-VOC-style dataset.

    ``dest`` ending in ``.zip`` -> a zip archive (entries at its root: ``JPEGImages/``,
    ``Annotations/``, ``ImageSets/Main/<split>.txt``, ``Masks/``, ``labels.txt``);
    otherwise a folder (created; existing files with the same names are overwritten, and an
    existing ``<split>.txt`` is replaced). Masks, if requested, are ``Masks/<id>_<k>.png``
    (0/255, one per object, ``k`` = object order in the XML). Returns the path written.
    """
    dest = Path(dest)
    files: list[tuple[str, bytes]] = []
    ids: list[str] = []
    for i, sc in enumerate(scenes):
        sid = sc.name if sc.seed is not None else f"scene_{i:08d}"
        ids.append(sid)
        files.append((f"JPEGImages/{sid}.jpg", _jpeg_bytes(sc.image, jpeg_quality)))
        files.append((f"Annotations/{sid}.xml", scene_to_voc_xml(sc, f"{sid}.jpg", folder_name).encode("utf-8")))
        if masks:
            for k, o in enumerate(sc.objects):
                files.append((f"Masks/{sid}_{k}.png", _png_bytes(o.mask.astype(np.uint8) * 255)))
    files.append((f"ImageSets/Main/{split}.txt", ("\n".join(ids) + "\n").encode()))
    files.append(("labels.txt", ("\n".join(CLASS_NAMES) + "\n").encode()))
    if dest.suffix.lower() == ".zip":
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in files:
                zf.writestr(name, data)
    else:
        for name, data in files:
            p = dest / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return dest


#: First seed of the scenes ``python -m clrp evaluate --dataset scenes:N`` and make_results.py use:
#: disjoint from the bundled model's training (< 10,000,000) and metrics (20,000,000+) seeds.
EVALUATION_SEED = 30_000_000
#: The scene shown first in the dashboard and the README's examples (a star and an arrow; a
#: metrics seed, never seen in training).
SAMPLE_SEED = 20_000_006


def voc_cache(n: int, seed: int, folder: str | os.PathLike, *, progress: bool = False,
              preset: str = "scenes") -> str:
    """Scenes ``seed .. seed+n-1`` as a VOC folder ``folder/scenes-<n>-<seed>``, generated once.
    ``preset="scenes-hard"``: the hard preset (:mod:`clrp.scenes_hard`), folder
    ``scenes-hard-<n>-<seed>`` (see :mod:`clrp.scene_presets`).

    Safe for several workers sharing ``folder`` (``--cache-dir`` with ``--shard``): one generates
    while the others wait on a lock; generation writes a temporary folder and renames it into place
    only when complete (a ``complete.json`` marker inside), so a returned folder is always whole
    and nobody deletes files another worker reads."""
    import json
    import shutil
    import sys
    import uuid

    from .fileio import file_lock, makedirs

    folder = str(folder)
    makedirs(folder, f"create the scenes cache folder {folder}")
    if preset == "scenes":
        gen, generator = iter_scenes, "clrp.scenes"
    else:
        from .scene_presets import preset_module

        mod = preset_module(preset)
        gen, generator = mod.iter_scenes, mod.__name__
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
        it = gen(n, seed)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, total=n, unit="scene", desc="generating scenes", file=sys.stderr)
        try:
            export_voc(it, tmp, split="test")
            with open(os.path.join(tmp, "complete.json"), "w", encoding="utf-8") as f:
                json.dump({"n": n, "seed": seed, "seeds": [seed, seed + n - 1], "generator": generator}, f)
            if os.path.isdir(dest):  # an incomplete folder from an older version: set it aside
                old = f"{tmp}-old"
                os.rename(dest, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def export_main(argv=None, *, scenes_from=None, folder_name: str | None = None,
                description: str = "Generate procedural scenes and export them as VOC") -> None:
    """``python -m clrp.scenes DEST [-n N] [--seed S] [--split SPLIT]`` (and the hard preset's
    ``python -m clrp.scenes_hard``): N scenes from seed S exported as VOC to a folder or .zip."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("dest", help="output folder or .zip")
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=9_000_000)
    ap.add_argument("--split", default="test")
    a = ap.parse_args(argv)
    extra = {"folder_name": folder_name} if folder_name else {}
    print(export_voc((scenes_from or iter_scenes)(a.n, a.seed), a.dest, a.split, **extra))


if __name__ == "__main__":  # pragma: no cover
    export_main()
