"""Pointing Game (Zhang et al. 2016), implemented as in docs/spec evaluation.md.

Protocol
--------
* For each (image, class present in the image) the class's map is reduced over channels (sum),
  resized to the ORIGINAL image size with bilinear interpolation (``align_corners=False``), and
  its arg-max point taken. Ties: the FIRST maximum in raster order (smallest row, then smallest
  column), i.e. ``numpy.argmax`` on the row-major flattened map. NaN values never win; a map that
  is all NaN is a miss.
* Hit if a ground-truth pixel of the class lies within ``tolerance`` pixels of the point:
  Euclidean distance between pixel indices (row, col) ``<= tolerance`` (a pixel exactly at the
  tolerance is a hit, one just beyond is a miss). Default 15 px; :func:`scaled_tolerance` gives
  15 px per 224 px of the image's shorter side.
* Ground truth: union of the class's NON-difficult boxes, or of its segmentation masks where the
  dataset has them. A class whose objects are all difficult is skipped (no row). A class whose
  ground truth is empty (e.g. a degenerate mask) gets a row with ``skipped`` set and ``hit``
  False, and is EXCLUDED from the scores: an empty ground truth is never counted as a hit.
* Score: per-class accuracy = hits / (hits + misses); the summary's headline number is the MEAN
  OF PER-CLASS accuracies (classes without any pair in a subset do not enter that subset's mean).
* Subsets: ``all``, and ``difficult`` = pairs where the class's boxes cover less than a quarter
  of the image (area of the union of its non-difficult boxes / image area < 0.25 -- boxes even
  when masks are used for hits) and at least one other class is present (another class with a
  non-difficult object in the same image).
* Baseline ``center``: the point is the geometric image centre ``((H-1)/2, (W-1)/2)`` (between
  pixels for even sizes; distances are measured from that point).

Conventions
-----------
``convention="clrp"`` (default) is the protocol above. ``convention="torchray"`` reproduces the
decisions of TorchRay's ``PointingGameBenchmark`` (Fong et al., the published VGG16/ResNet-50
tables): (1) a hit needs a ground-truth pixel at squared distance strictly below
``tolerance**2`` (float32), not at most ``tolerance``; (2) the ground truth is the union of ALL
the class's boxes, difficult ones included (masks are not used; a class whose boxes are all
difficult is still skipped); (3) a map holding a NaN points at its first NaN (``torch.argmax``),
where clrp ignores NaN; (4) the centre baseline points at ``(H/2, W/2)``, not
``((H-1)/2, (W-1)/2)``; (5) the map is resized to the image in float32 (TorchRay's
``resize_saliency`` on a model's saliency), not float64, which decides ties on plateaus.
TorchRay's "difficult" subset is not a rule but a table of VOC07-test (and COCO) images with
per-class flags (``pointing_game_ebp_voc07_difficult.txt`` in TorchRay): pass it as
``difficult_table`` and a pair is in the subset iff its image is flagged for the class (an image
missing from the table counts, as in TorchRay).

The hit decision of both conventions is one function, :func:`is_hit`, on the distance from the
point to the nearest ground-truth pixel: rows store that distance, so :func:`at_tolerance`
re-scores them with the same rule.

Rows are plain dicts / a DataFrame with one row per (image, class, method), so a runner can
compute them per batch, append them to a file and resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

DEFAULT_TOLERANCE = 15.0
DIFFICULT_COVERAGE = 0.25
CENTER = "center"
CONVENTIONS = ("clrp", "torchray")

ROW_COLUMNS = ["image_id", "class_name", "method", "hit", "point_y", "point_x", "distance",
               "tolerance", "coverage", "other_classes", "difficult", "height", "width", "skipped",
               "constant_map"]


def scaled_tolerance(height: int, width: int, base: float = DEFAULT_TOLERANCE, reference: int = 224) -> float:
    """``base`` pixels at a ``reference``-pixel shorter side, scaled proportionally:
    ``base * min(height, width) / reference`` (15 px at 224 px -> 30 px at 448 px)."""
    return float(base) * min(int(height), int(width)) / float(reference)


def saliency_2d(saliency) -> np.ndarray:
    """A map ([H, W], [C, H, W] or [1, C, H, W]; NumPy or torch) as float64 ``[H, W]`` (channels summed)."""
    try:
        import torch
        if isinstance(saliency, torch.Tensor):
            saliency = saliency.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(saliency, dtype=np.float64)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = a.sum(axis=0)  # channel sum (linear, so the same before or after resizing)
    if a.ndim != 2:
        raise ValueError(f"saliency map must be [H, W] or [C, H, W], got shape {a.shape}")
    return a


def resize_map(saliency, height: int, width: int, convention: str = "clrp") -> np.ndarray:
    """Channel-sum a map ([H, W], [C, H, W] or [1, C, H, W]; NumPy or torch) and resize it to
    (height, width) with bilinear interpolation (``align_corners=False``). Returns float64.
    ``convention="torchray"`` interpolates in float32, as TorchRay's ``resize_saliency`` does
    with a model's saliency: the rounding decides which pixel of a plateau is the maximum."""
    a = saliency_2d(saliency)
    if convention == "torchray":
        a = a.astype(np.float32)
    if a.shape == (height, width):
        return a.astype(np.float64)
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    out = F.interpolate(t, size=(int(height), int(width)), mode="bilinear", align_corners=False)
    return out[0, 0].numpy().astype(np.float64)  # exact for float32 values: the same arg-max


def map_to_image(saliency, height: int, width: int, crop_box=None, convention: str = "clrp") -> np.ndarray:
    """Place a map on the original image's pixel grid.

    ``crop_box=(x0, y0, x1, y1)`` (original-image pixel coordinates, exclusive end) is the region
    the model input (and so the map) covers, e.g. after a resize + centre crop; pixels outside it
    are NaN (never chosen as the arg-max). ``None`` = the map covers the whole image (the map is
    simply resized, bilinear).
    """
    if crop_box is None:
        return resize_map(saliency, height, width, convention)
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    if (x0, y0, x1, y1) == (0.0, 0.0, float(width), float(height)):
        return resize_map(saliency, height, width, convention)
    c0, r0 = int(round(x0)), int(round(y0))
    c1, r1 = int(round(x1)), int(round(y1))
    out = np.full((height, width), np.nan)
    if c1 <= c0 or r1 <= r0:
        return out
    inner = resize_map(saliency, r1 - r0, c1 - c0, convention)
    ys, xs = slice(max(r0, 0), min(r1, height)), slice(max(c0, 0), min(c1, width))
    out[ys, xs] = inner[ys.start - r0:ys.stop - r0, xs.start - c0:xs.stop - c0]
    return out


def argmax_point(saliency) -> Optional[tuple]:
    """(row, col) of the maximum; ties -> first in raster order; NaN ignored; None if all NaN."""
    a = saliency_2d(saliency)
    flat = a.reshape(-1)
    nan = np.isnan(flat)
    if nan.all():
        return None
    if nan.any():
        flat = np.where(nan, -np.inf, flat)
    i = int(np.argmax(flat))
    return divmod(i, a.shape[1])


def center_point(height: int, width: int, convention: str = "clrp") -> tuple:
    if convention == "torchray":
        return (height / 2.0, width / 2.0)
    return ((height - 1) / 2.0, (width - 1) / 2.0)


def torchray_point(saliency) -> tuple:
    """TorchRay's point: ``torch.argmax`` of the flattened map (first maximum; a NaN wins)."""
    a = saliency_2d(saliency)
    flat = a.reshape(-1)
    nan = np.flatnonzero(np.isnan(flat))
    i = int(nan[0]) if nan.size else int(np.argmax(flat))
    return divmod(i, a.shape[1])


def nearest_distance(point, gt_mask: np.ndarray, radius: Optional[float] = None) -> float:
    """Euclidean distance from ``point`` (row, col; may be fractional) to the nearest True pixel of
    ``gt_mask``; ``inf`` if none (within ``radius`` when given, which bounds the search window)."""
    gt = np.asarray(gt_mask, dtype=np.bool_)
    if point is None or not gt.any():
        return math.inf
    py, px = float(point[0]), float(point[1])
    h, w = gt.shape
    if radius is not None and math.isfinite(radius):
        r = int(math.ceil(radius)) + 1
        y0, y1 = max(0, int(math.floor(py)) - r), min(h, int(math.ceil(py)) + r + 1)
        x0, x1 = max(0, int(math.floor(px)) - r), min(w, int(math.ceil(px)) + r + 1)
    else:
        y0, y1, x0, x1 = 0, h, 0, w
    if y1 <= y0 or x1 <= x0:
        return math.inf
    ys, xs = np.nonzero(gt[y0:y1, x0:x1])
    if ys.size == 0:
        return math.inf
    d2 = (ys + y0 - py) ** 2 + (xs + x0 - px) ** 2
    return float(math.sqrt(d2.min()))


def is_hit(distance, tolerance, convention: str = "clrp"):
    """THE Pointing Game decision, from the distance (px) between the point and the nearest
    ground-truth pixel (``inf``: no such pixel, or no point). ``clrp``: ``distance <= tolerance``
    (inclusive; a 1e-9 slack absorbs sqrt's rounding at integer offsets). ``torchray``: TorchRay's
    ``distance**2 < tolerance**2`` in float32 (strict; the squares of pixel offsets are exact in
    float32, so this is its per-pixel test). Scalars give a bool, arrays/Series an array of bools."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    d = np.asarray(distance, dtype=np.float64)
    t = np.asarray(tolerance, dtype=np.float64)
    if convention == "torchray":
        with np.errstate(over="ignore", invalid="ignore"):
            hit = (d * d).astype(np.float32) < t.astype(np.float32) ** 2
    else:
        hit = d <= t + 1e-9
    return bool(hit) if hit.ndim == 0 else hit


def pointing_hit(point, gt_mask: np.ndarray, tolerance: float = DEFAULT_TOLERANCE, convention: str = "clrp") -> bool:
    """Hit iff a ground-truth pixel lies within ``tolerance`` of ``point`` (:func:`is_hit`).
    An empty ground truth or a missing point (all-NaN map) is never a hit."""
    return is_hit(nearest_distance(point, gt_mask, radius=tolerance), tolerance, convention)


# ---------------------------------------------------------------------------------------------
@dataclass
class PointingTarget:
    """The ground truth of one (image, class) pair for the Pointing Game."""

    class_name: str
    mask: np.ndarray          # bool [H, W] at the original image size (may be empty)
    coverage: float           # area of the union of the class's boxes / image area
    other_classes: int        # number of other evaluated classes in the image
    difficult: bool           # member of the "difficult" subset


def pointing_targets(sample, *, use_masks: bool = True, classes: Optional[Iterable[str]] = None,
                     convention: str = "clrp") -> list:
    """Per-class ground truth of a ``clrp.datasets.Sample``. Classes whose objects are all
    difficult are skipped. ``classes`` restricts to these class names (e.g. the mapped ones);
    the "other class present" test still counts every evaluated class of the image.
    ``convention="torchray"``: the union of all the class's boxes, difficult ones included."""
    present = []
    for o in sample.objects:
        if not o.difficult and o.class_name not in present:
            present.append(o.class_name)
    if not present:
        return []
    w, h = sample.ensure_size()
    keep = None if classes is None else set(classes)
    out = []
    for c in present:
        if keep is not None and c not in keep:
            continue
        if convention == "torchray":
            m = np.zeros((h, w), dtype=np.bool_)
            for o in sample.objects_of(c, include_difficult=True):
                m |= o.region(h, w, use_mask=False)
        else:
            m = sample.gt_mask(c, use_masks=use_masks)
        boxes = m if not use_masks else sample.gt_mask(c, use_masks=False)
        cov = float(boxes.sum()) / float(h * w)  # the spec's "class's boxes cover", also with masks
        others = len(present) - 1
        out.append(PointingTarget(c, m, cov, others, cov < DIFFICULT_COVERAGE and others >= 1))
    return out


def pointing_row(image_id, target: PointingTarget, method: str, saliency=None, *,
                 tolerance: float = DEFAULT_TOLERANCE, point=None, convention: str = "clrp") -> dict:
    """One result row. Give ``saliency`` (any size; resized to the ground truth's size) or an
    explicit ``point`` (row, col) -- e.g. :func:`center_point` for the baseline."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    h, w = target.mask.shape
    if point is None:
        if saliency is None:
            raise ValueError("give a saliency map or a point")
        full = resize_map(saliency, h, w, convention)
        point = torchray_point(full) if convention == "torchray" else argmax_point(full)
        with np.errstate(invalid="ignore"):
            constant = bool(point is None or np.nanmax(full) == np.nanmin(full))
    else:
        constant = False
    skipped = None
    if not target.mask.any():
        skipped = "empty ground truth"
    elif point is None:
        pass  # all-NaN map: counted as a miss
    d = nearest_distance(point, target.mask)
    hit = skipped is None and is_hit(d, tolerance, convention)
    return {
        "image_id": str(image_id), "class_name": target.class_name, "method": method,
        "hit": bool(hit),
        "point_y": float("nan") if point is None else float(point[0]),
        "point_x": float("nan") if point is None else float(point[1]),
        "distance": d, "tolerance": float(tolerance), "coverage": target.coverage,
        "other_classes": target.other_classes, "difficult": target.difficult,
        "height": h, "width": w, "skipped": skipped,
        "constant_map": constant,  # no maximum to speak of: the point is the first pixel
    }


def pointing_rows(image_id, targets: Sequence[PointingTarget], maps: Mapping[str, Mapping[str, object]], *,
                  tolerance: float | str = DEFAULT_TOLERANCE, center: bool = True, convention: str = "clrp") -> list:
    """Rows for one image. ``maps``: method -> {class_name -> map}; a class missing from a
    method's dict is not evaluated for that method. ``center=True`` adds the centre baseline.
    ``tolerance="scaled"`` uses :func:`scaled_tolerance` of the image size."""
    rows = []
    for t in targets:
        h, w = t.mask.shape
        tol = scaled_tolerance(h, w) if tolerance == "scaled" else float(tolerance)
        if center:
            rows.append(pointing_row(image_id, t, CENTER, point=center_point(h, w, convention), tolerance=tol,
                                     convention=convention))
        for method, per_class in maps.items():
            if t.class_name in per_class:
                rows.append(pointing_row(image_id, t, method, per_class[t.class_name], tolerance=tol,
                                         convention=convention))
    return rows


def pointing_game(samples: Iterable, explain: Callable, methods: Sequence[str], *,
                  tolerance: float | str = DEFAULT_TOLERANCE, use_masks: bool = True,
                  classes: Optional[Iterable[str]] = None, center: bool = True):
    """Simple in-memory loop (the resumable runner does the same per batch).

    ``explain(sample, class_names, method) -> {class_name: map}`` computes the maps of one image.
    Returns the rows DataFrame (see :func:`pointing_summary`).
    """
    import pandas as pd

    rows = []
    for s in samples:
        targets = pointing_targets(s, use_masks=use_masks, classes=classes)
        if not targets:
            continue
        names = [t.class_name for t in targets]
        maps = {m: explain(s, names, m) for m in methods}
        rows.extend(pointing_rows(s.image_id, targets, maps, tolerance=tolerance, center=center))
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def pointing_summary(rows, per_class: bool = True):
    """Summary per method: mean of per-class accuracies on ``all`` and ``difficult``, pair
    counts, and (``per_class``) each class's accuracy on ``all`` as extra columns.

    ``rows``: a DataFrame with the :data:`ROW_COLUMNS` (or a list of row dicts). Rows with
    ``skipped`` set are excluded. Also returns the settings in ``DataFrame.attrs``.
    """
    import pandas as pd

    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    if len(df) == 0:
        return pd.DataFrame(columns=["all", "difficult", "n_all", "n_difficult", "n_classes", "n_constant_maps"])
    df = df[df["skipped"].isna()] if "skipped" in df else df
    out = []
    for method, g in df.groupby("method", sort=False):
        acc_all = g.groupby("class_name")["hit"].mean()
        gd = g[g["difficult"].astype(bool)]
        acc_diff = gd.groupby("class_name")["hit"].mean()
        rec = {"method": method,
               "all": float(acc_all.mean()) if len(acc_all) else float("nan"),
               "difficult": float(acc_diff.mean()) if len(acc_diff) else float("nan"),
               "n_all": int(len(g)), "n_difficult": int(len(gd)), "n_classes": int(len(acc_all)),
               "n_constant_maps": int(g["constant_map"].sum()) if "constant_map" in g else 0}
        if per_class:
            for c, v in acc_all.items():
                rec[f"class:{c}"] = float(v)
        out.append(rec)
    res = pd.DataFrame(out).set_index("method")
    tols = sorted(df["tolerance"].unique().tolist()) if "tolerance" in df else []
    res.attrs["settings"] = (
        "Pointing Game: mean of per-class accuracies; hit = ground-truth pixel within "
        f"tolerance (Euclidean, inclusive) of the arg-max; tolerance(s) {tols} px; "
        "difficult = class region < 1/4 of image and another class present")
    return res


def at_tolerance(rows, tolerance: float, *, scaled: bool = False, convention: str = "clrp"):
    """The rows re-scored at another ``tolerance`` from their stored distances (no map is recomputed):
    a copy with ``hit`` and ``tolerance`` replaced. ``scaled``: ``tolerance`` pixels per 224 px of
    each image's shorter side (:func:`scaled_tolerance`); ``convention`` as the rows were made
    (:func:`is_hit`: "clrp" distance <= tolerance, "torchray" strictly below). Skipped rows stay misses."""
    import pandas as pd

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    df = (pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows).copy()
    tol = (df["height"].combine(df["width"], lambda h, w: scaled_tolerance(h, w, base=tolerance)) if scaled
           else pd.Series(float(tolerance), index=df.index))
    hit = pd.Series(is_hit(df["distance"].astype(float).to_numpy(), tol.to_numpy(), convention), index=df.index)
    if "skipped" in df:
        hit &= df["skipped"].isna()
    df["hit"], df["tolerance"] = hit.astype(bool), tol.astype(float)
    return df


def per_class_table(rows):
    """Per-class accuracies: index class, columns (method, subset)."""
    import pandas as pd

    df = pd.DataFrame(rows) if not isinstance(rows, pd.DataFrame) else rows
    df = df[df["skipped"].isna()]
    a = df.groupby(["class_name", "method"])["hit"].mean().unstack("method")
    d = df[df["difficult"].astype(bool)].groupby(["class_name", "method"])["hit"].mean().unstack("method")
    return pd.concat({"all": a, "difficult": d}, axis=1)


# ---------------------------------------------------------------------------------------------
# The protocol plug-in (see clrp.evaluation.protocol)

from .protocol import Chart, Protocol, register_protocol  # noqa: E402


@register_protocol
class PointingGame(Protocol):
    name, title, page = "pointing", "Pointing Game", "pointing"
    built_in = True
    description = "is the map's arg-max within the tolerance of the class's ground truth?"
    needs_objects = True

    @dataclass
    class Options:
        tolerance: object = DEFAULT_TOLERANCE  # pixels, or "scaled" (15 px per 224 px of the shorter side)
        use_masks: bool = True  # masks instead of boxes where the dataset has them
        center: bool = True  # add the centre baseline
        convention: str = "clrp"  # clrp | torchray (TorchRay's published decisions; see the module doc)
        difficult_table: Optional[str] = None  # TorchRay's difficult-image table (a file), for its subset

    def validate(self, o, run):
        t = o.tolerance
        if t != "scaled" and (isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0):
            raise _error(f"tolerance must be a number of pixels >= 0 or 'scaled', got {t!r}")
        if o.convention not in CONVENTIONS:
            raise _error(f"convention must be one of {', '.join(CONVENTIONS)}, got {o.convention!r}")
        if o.difficult_table is not None:
            read_difficult_table(o.difficult_table)

    def ground_truth(self, sample, classes, o):
        if not sample.objects:
            return None
        return pointing_targets(sample, use_masks=o.use_masks, classes=classes, convention=o.convention)

    def rows(self, batch, o):
        out = []
        for i, plist in batch.pairs_of().items():
            targets = batch.ground_truth[self.name].get(i)
            if not targets:
                continue
            s = batch.samples[i]
            crop = batch.crop_box(s)
            k_of = {c: k for k, c, _ in plist}
            maps = {m: {t.class_name: map_to_image(batch.maps[m][k_of[t.class_name]], s.height, s.width, crop,
                                                   o.convention)
                        for t in targets} for m in batch.run.methods}
            rows = pointing_rows(s.image_id, targets, maps, tolerance=o.tolerance, center=o.center,
                                 convention=o.convention)
            table = read_difficult_table(o.difficult_table) if o.difficult_table else None
            for row in rows:
                row["target"] = batch.mapping[row["class_name"]]
                if table is not None:
                    flagged = table.get(str(s.image_id).rsplit(".", 1)[0])
                    row["difficult"] = True if flagged is None else row["class_name"] in flagged
            out.extend(rows)
        return out

    def summary(self, df, options=None):
        return pointing_summary(df)

    def charts(self, summary, rows=None):
        import pandas as pd

        s = summary.reset_index()
        long = s.melt(id_vars=["method"], value_vars=[c for c in ("all", "difficult") if s[c].notna().any()],
                      var_name="subset", value_name="accuracy")
        charts = [Chart("bar", "Pointing Game accuracy per method", long, x="method", y="accuracy", series="subset",
                        y_range=(0, 1.1), y_title="accuracy (mean over classes)",
                        caption=summary.attrs.get("settings"))]
        cls = [c for c in s.columns if str(c).startswith("class:")]
        if cls:
            per = s.melt(id_vars=["method"], value_vars=cls, var_name="class", value_name="accuracy")
            per["class"] = per["class"].str[6:]
            charts.append(Chart("heatmap", "Per-class accuracy", per, x="class", y="method", value="accuracy",
                                y_range=(0, 1)))
        cols = [c for c in ["all", "difficult", "n_all", "n_difficult", "n_classes"] if c in s.columns]
        charts.append(Chart("table", "Pointing Game", pd.DataFrame(s[["method"] + cols])))
        return charts


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
_TABLES: dict = {}


def read_difficult_table(path: str) -> dict:
    """TorchRay's difficult-image table: ``image<TAB>flag...`` per line, one 0/1 flag per class.
    Classes are named by a first line ``# image<TAB>class...`` or, without one, are PASCAL VOC's 20
    classes in TorchRay's order. Returns {image id: set of flagged class names}."""
    key = str(path)
    if key in _TABLES:
        return _TABLES[key]
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    except OSError as exc:
        raise _error(f"cannot read the difficult table {path}: {exc.strerror or exc}") from None
    names = list(VOC_CLASSES)
    if lines and lines[0][0].lstrip("# ").lower() in ("image", "image_id"):
        names = [c.strip() for c in lines[0][1:]]
        lines = lines[1:]
    table = {}
    for n, row in enumerate(lines, 1):
        flags = row[1:]
        if len(flags) != len(names) or any(f.strip() not in ("0", "1") for f in flags):
            raise _error(f"difficult table {path}, line {n}: expected an image id and {len(names)} flags (0/1)")
        table[row[0].strip()] = {c for c, f in zip(names, flags) if f.strip() == "1"}
    _TABLES[key] = table
    return table


def _error(msg):
    from ..errors import ClrpError

    return ClrpError(msg)
