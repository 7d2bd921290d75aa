"""Heatmap rendering for relevance maps: colormaps, colour scales, overlays, PNG/NPY export.

Plain NumPy + matplotlib colormaps; this module never imports Streamlit (or plotly). The
dashboard's maps are drawn by the browser from :func:`map_grid_data`. Conventions:

- A *map* is a 2-D float array ``H x W``. Relevance tensors ``[N, C, H, W]`` / ``[C, H, W]`` are
  reduced to maps by summing over colour channels (:func:`channel_sum`), as heatmaps usually are.
- Signed maps (anything with negative values: CLRP with ``contrast="signed"``, gradients, ...)
  are drawn with a *diverging* colormap centred at 0 (symmetric limits ``[-m, m]``), so white /
  the middle colour always means zero. Non-negative maps use a *sequential* colormap on
  ``[0, m]``.
- ``scale="shared"`` gives every map of a set the same limits (so magnitudes can be compared
  across methods/classes); ``scale="per_map"`` scales each map to its own maximum.
- ``clip`` (a percentile, default 100 = the maximum) makes the limits robust to a few extreme
  pixels; values beyond the limits saturate.
"""
from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "COLORMAPS", "DIVERGING", "SEQUENTIAL", "Limits", "channel_sum", "is_signed", "default_colormap",
    "colormap_kind", "color_limits", "normalize", "colorize", "overlay", "to_png", "npy_bytes",
    "colorbar_png", "plotly_colorscale", "render_grid_png", "settings_json", "map_grid_data",
]

#: Diverging colormaps (for signed maps, centred at 0) and sequential ones (non-negative maps).
DIVERGING: tuple[str, ...] = ("bwr", "seismic", "coolwarm", "RdBu_r", "PiYG")
SEQUENTIAL: tuple[str, ...] = ("hot", "inferno", "viridis", "magma", "Reds", "gray")
COLORMAPS: dict[str, str] = {**{c: "diverging" for c in DIVERGING}, **{c: "sequential" for c in SEQUENTIAL}}

_LUT_SIZE = 256
_LUTS: dict[str, np.ndarray] = {}


@dataclass(frozen=True)
class Limits:
    """Colour limits of one map: ``vmin``/``vmax`` (symmetric around 0 for diverging maps)."""

    vmin: float
    vmax: float

    def as_tuple(self) -> tuple[float, float]:
        return (self.vmin, self.vmax)


# ---------------------------------------------------------------------------------------------
# Maps and limits

def channel_sum(relevance) -> np.ndarray:
    """``[1, C, H, W]`` / ``[C, H, W]`` tensor or array -> ``H x W`` float32 (sum over channels).
    A 2-D input is returned as float32 unchanged."""
    if hasattr(relevance, "detach"):
        relevance = relevance.detach().to("cpu").float().numpy()
    a = np.asarray(relevance, dtype=np.float32)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"channel_sum takes one map; got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim == 3:
        a = a.sum(0)
    if a.ndim != 2:
        raise ValueError(f"expected a map [H, W], [C, H, W] or [1, C, H, W]; got shape {a.shape}")
    return a


def is_signed(maps) -> bool:
    """True if any map has a negative (finite) value."""
    for m in _as_list(maps):
        a = np.asarray(m)
        if a.size and np.nanmin(np.where(np.isfinite(a), a, 0)) < 0:
            return True
    return False


def colormap_kind(cmap: str) -> str:
    """``"diverging"`` or ``"sequential"`` (unknown matplotlib names are taken as sequential)."""
    return COLORMAPS.get(cmap, "sequential")


def default_colormap(maps) -> str:
    """``"bwr"`` for signed maps, ``"hot"`` for non-negative ones."""
    return "bwr" if is_signed(maps) else "hot"


def _as_list(maps) -> list:
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        return [maps]
    if hasattr(maps, "ndim") and getattr(maps, "ndim", 0) == 2:
        return [maps]
    return list(maps)


def _peak(a: np.ndarray, clip: float, signed: bool) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0
    v = np.abs(a) if signed else np.clip(a, 0, None)
    return float(np.percentile(v, clip)) if clip < 100 else float(v.max())


#: Maps whose largest |value| is below this are numerically zero (float32 rounding of outputs of
#: order 1-10 is ~1e-6): drawn as zero, never stretched to full colour.
ZERO_TOL = 1e-6


def is_zero(a) -> bool:
    """True if every finite value of ``a`` is below :data:`ZERO_TOL` in magnitude."""
    return _peak(np.asarray(a), 100.0, True) < ZERO_TOL


def color_limits(maps, *, scale: str = "shared", cmap: str | None = None, clip: float = 100.0,
                 signed: bool | None = None, groups: Sequence | None = None) -> list[Limits]:
    """Colour limits for each of ``maps``.

    ``scale``: ``"shared"`` (maps of one group share limits) or ``"per_map"``. ``groups``: one
    label per map (e.g. :func:`clrp.methods.map_kind`): maps in different units never share a
    scale; default: one group. ``signed``: draw as signed (symmetric ``[-m, m]``); default: True
    if the colormap is diverging or any map is negative. ``clip``: percentile of |values| taken as
    the maximum (100 = the true maximum). A map that is numerically zero (:func:`is_zero`) gets
    limits ``(-1, 1)`` / ``(0, 1)`` (or its group's) so it renders as zero, not noise.
    """
    if scale not in ("shared", "per_map"):
        raise ValueError("scale must be 'shared' or 'per_map'")
    if not 0 < clip <= 100:
        raise ValueError("clip must be a percentile in (0, 100]")
    ms = [np.asarray(m) for m in _as_list(maps)]
    if groups is not None and len(groups) != len(ms):
        raise ValueError("one group label per map")
    if signed is None:
        signed = (cmap is not None and colormap_kind(cmap) == "diverging") or is_signed(ms)
    peaks = [0.0 if is_zero(m) else _peak(m, clip, signed) for m in ms]
    if scale == "shared":
        labels = list(groups) if groups is not None else [None] * len(ms)
        top = {}
        for g, p in zip(labels, peaks):
            top[g] = max(top.get(g, 0.0), p)
        peaks = [top[g] for g in labels]

    def lim(p):
        p = p if p > 0 and np.isfinite(p) else 1.0
        return Limits(-p, p) if signed else Limits(0.0, p)

    return [lim(p) for p in peaks]


def normalize(a, vmin: float, vmax: float) -> np.ndarray:
    """``a`` mapped linearly to [0, 1] (clipped; NaN stays NaN)."""
    a = np.asarray(a, dtype=np.float32)
    span = float(vmax) - float(vmin)
    if span <= 0:
        span = 1.0
    return np.clip((a - float(vmin)) / span, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Colours

def _lut(cmap: str) -> np.ndarray:
    """``_LUT_SIZE x 3`` uint8 lookup table of a matplotlib colormap (cached)."""
    lut = _LUTS.get(cmap)
    if lut is None:
        import matplotlib

        try:
            cm = matplotlib.colormaps[cmap]
        except KeyError:
            raise ValueError(f"unknown colormap {cmap!r}; e.g. {', '.join(COLORMAPS)}") from None
        lut = (cm(np.linspace(0, 1, _LUT_SIZE))[:, :3] * 255).round().astype(np.uint8)
        _LUTS[cmap] = lut
    return lut


def colorize(a, cmap: str = "bwr", vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """A map -> RGB uint8 ``H x W x 3``. Limits default to :func:`color_limits` of the map alone.
    NaN pixels are drawn black."""
    a = channel_sum(a)
    if vmin is None or vmax is None:
        lim = color_limits([a], scale="per_map", cmap=cmap)[0]
        vmin = lim.vmin if vmin is None else vmin
        vmax = lim.vmax if vmax is None else vmax
    n = normalize(a, vmin, vmax)
    nan = ~np.isfinite(n)
    idx = np.rint(np.where(nan, 0, n) * (_LUT_SIZE - 1)).astype(np.intp)
    rgb = _lut(cmap)[idx]
    if nan.any():
        rgb[nan] = 0
    return rgb


def _resize_rgb(image: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def overlay(image, a, cmap: str = "bwr", vmin: float | None = None, vmax: float | None = None,
            opacity: float = 0.6, gray: bool = False) -> np.ndarray:
    """The colorised map blended over ``image`` (RGB uint8 ``H x W x 3``):
    ``(1 - opacity) * image + opacity * colours``. ``opacity=1`` is the heatmap alone, ``0`` the
    image. ``gray=True`` desaturates the image first so the colours stand out. The image is
    resized to the map if their sizes differ."""
    if not 0 <= opacity <= 1:
        raise ValueError("opacity must be in [0, 1]")
    heat = colorize(a, cmap, vmin, vmax).astype(np.float32)
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.uint8)
    if img.shape[:2] != heat.shape[:2]:
        img = _resize_rgb(img, *heat.shape[:2])
    img = img.astype(np.float32)
    if gray:
        img = np.repeat((img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None], 3, axis=2)
    out = (1.0 - opacity) * img + opacity * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Export

def to_png(rgb: np.ndarray, *, scale: int = 1) -> bytes:
    """RGB(A) uint8 array -> PNG bytes (``scale`` > 1 enlarges with nearest-neighbour, so pixels
    stay crisp)."""
    from PIL import Image

    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        raise ValueError("to_png takes uint8 images; colorize or overlay maps first")
    img = Image.fromarray(np.ascontiguousarray(a))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def npy_bytes(array) -> bytes:
    """A tensor/array as ``.npy`` file bytes (float32, shape kept)."""
    if hasattr(array, "detach"):
        array = array.detach().to("cpu").float().numpy()
    buf = io.BytesIO()
    np.save(buf, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def colorbar_png(cmap: str, vmin: float, vmax: float, *, width: int = 320, height: int = 56,
                 label: str = "relevance") -> bytes:
    """A horizontal colorbar with tick labels, as PNG bytes (matplotlib, Agg backend)."""
    from matplotlib.figure import Figure
    from matplotlib.colors import Normalize
    from matplotlib.cm import ScalarMappable

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes([0.05, 0.55, 0.9, 0.3])
    fig.colorbar(ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap), cax=ax, orientation="horizontal")
    ax.tick_params(labelsize=7)
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    if label:
        ax.set_title(label, fontsize=7, pad=2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int = 2) -> list[str]:
    """``text`` broken into at most ``max_lines`` lines that fit ``width`` px (the last one
    shortened with an ellipsis only if it still does not fit)."""
    words, lines, cur = str(text).split(), [], ""
    for wd in words:
        trial = f"{cur} {wd}".strip()
        if draw.textlength(trial, font=font) <= width or not cur:
            cur = trial
        else:
            lines.append(cur)
            cur = wd
    lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    last = lines[-1]
    while draw.textlength(last, font=font) > width and len(last) > 2:
        last = last[:-2] + "…"
    lines[-1] = last
    return lines


def render_grid_png(tiles: Sequence[np.ndarray], titles: Sequence[str] | None = None, *, columns: int = 4,
                    pad: int = 4, scale: int = 1, colorbars: Sequence[tuple] = ()) -> bytes:
    """Several RGB tiles (same size) side by side in a grid, titles above each (wrapped, never
    cut mid-word unless a word is wider than the tile), as PNG bytes. ``colorbars``: ``(label,
    cmap, vmin, vmax)`` per colour scale in the grid, drawn below it."""
    from PIL import Image, ImageDraw

    tiles = [np.asarray(t) for t in tiles]
    if not tiles:
        raise ValueError("no tiles to render")
    scale = max(1, int(scale))
    h, w = tiles[0].shape[0] * scale, tiles[0].shape[1] * scale
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    font = _font(max(11, min(16, w // 14)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(probe, t, font, w) for t in titles] if titles else []
    line_h = int(font.size * 1.25) if hasattr(font, "size") else 12
    title_h = (max(len(x) for x in wrapped) * line_h + 2) if wrapped else 0
    bars = [Image.open(io.BytesIO(colorbar_png(cm, lo, hi, width=max(200, min(360, columns * w // max(1, len(colorbars)))),
                                               label=lab))).convert("RGB") for lab, cm, lo, hi in colorbars]
    bar_h = max((b.size[1] for b in bars), default=0)
    width = max(columns * (w + pad) + pad, sum(b.size[0] + pad for b in bars) + pad)
    canvas = Image.new("RGB", (width, rows * (h + pad + title_h) + pad + bar_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        x, y = pad + c * (w + pad), pad + r * (h + pad + title_h)
        for j, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((x, y + j * line_h), line, fill=(0, 0, 0), font=font)
        tile = Image.fromarray(np.ascontiguousarray(t[..., :3], dtype=np.uint8))
        tile = tile.resize((w, h), Image.NEAREST)
        canvas.paste(tile, (x, y + title_h))
    x = pad
    for b in bars:
        canvas.paste(b, (x, rows * (h + pad + title_h) + pad))
        x += b.size[0] + pad
    return to_png(np.asarray(canvas))


def settings_json(settings: dict) -> str:
    """Settings as pretty JSON (tuples -> lists, numpy scalars -> Python numbers)."""
    def conv(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    return json.dumps(settings, indent=2, default=conv, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Plotly (the dashboard's evaluation charts)

def plotly_colorscale(cmap: str, n: int = 11) -> list:
    """A plotly colorscale ``[[pos, 'rgb(r,g,b)'], ...]`` sampled from a matplotlib colormap."""
    lut = _lut(cmap)
    idx = np.linspace(0, _LUT_SIZE - 1, n).round().astype(int)
    return [[float(i / (n - 1)), f"rgb({lut[j][0]},{lut[j][1]},{lut[j][2]})"] for i, j in enumerate(idx)]


# ---------------------------------------------------------------------------------------------
# Data for a browser-side grid (the dashboard's map view)

def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def map_grid_data(maps: Sequence, titles: Sequence[str], image=None, *, groups: Sequence | None = None,
                  clip: float = 100.0, hover_label: str = "relevance", columns: int = 4,
                  cell_height: int = 250) -> dict:
    """Everything a browser needs to draw ``maps`` as overlays and to change the colormap, the
    opacity and the colour scale itself, without asking the server again (JSON-serialisable).

    The colour limits come from :func:`color_limits` for every choice the browser can make:
    ``limits[scale][kind][i]`` for ``scale`` in ``shared`` / ``per_map`` and ``kind`` the
    colormap kind (diverging maps are drawn symmetric, sequential ones on ``[0, m]`` unless the
    maps are signed); only ``clip`` needs the server. A browser reproduces :func:`overlay`:
    ``idx = rint(clip((v - vmin) / (vmax - vmin), 0, 1) * 255)``, colour ``luts[cmap][idx]``
    (NaN: black), pixel ``rint((1 - opacity) * image + opacity * colour)``.

    Arrays are base64 of little-endian bytes: ``values`` float32 ``H x W`` per map, ``image``
    RGB uint8 ``H x W x 3`` (resized to the maps), LUTs ``256 x 3`` uint8. ``content`` is a
    digest of the values and the image (a browser keeps what it decoded while it is unchanged).
    """
    import hashlib

    maps = [channel_sum(m) for m in maps]
    if not maps:
        raise ValueError("no maps to draw")
    if len(titles) != len(maps):
        raise ValueError("one title per map")
    if len({m.shape for m in maps}) != 1:
        raise ValueError("the maps of one grid must have one size; got " + ", ".join(sorted({str(m.shape) for m in maps})))
    groups = [str(g) for g in groups] if groups is not None else [hover_label] * len(maps)
    if len(groups) != len(maps):
        raise ValueError("one group label per map")
    h, w = maps[0].shape
    digest = hashlib.sha1()
    for m in maps:
        digest.update(m.astype("<f4").tobytes())
    rgb = None
    if image is not None:
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3].astype(np.uint8)
        if img.shape[:2] != (h, w):
            img = _resize_rgb(img, h, w)
        rgb = _b64(img)
        digest.update(img.tobytes())
    representative = {"diverging": DIVERGING[0], "sequential": SEQUENTIAL[0]}
    limits = {scale: {kind: [l.as_tuple() for l in color_limits(maps, scale=scale, cmap=cm, clip=clip, groups=groups)]
                      for kind, cm in representative.items()}
              for scale in ("shared", "per_map")}
    return {
        "content": digest.hexdigest(),
        "width": int(w), "height": int(h), "columns": int(max(1, min(columns, len(maps)))),
        "cell_height": int(cell_height), "clip": float(clip), "hover_label": hover_label,
        "image": rgb,
        "maps": [{"title": str(t), "group": g, "zero": bool(is_zero(m)), "values": _b64(m.astype("<f4"))}
                 for m, t, g in zip(maps, titles, groups)],
        "limits": limits,
        "colormaps": {name: {"kind": kind, "lut": _b64(_lut(name))} for name, kind in COLORMAPS.items()},
    }
