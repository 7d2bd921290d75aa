"""Class-discriminativeness: how different are the maps of different classes of one image?

For an image with two or more classes, each method's maps of every pair of classes are compared:
* ``pearson``: Pearson correlation of the channel-summed maps over pixels (NaN if a map is
  constant -- correlation undefined). LRP's near-identical maps give r ~ 1; CLRP's are expected
  to be weakly or negatively correlated (method.md section 1).
* ``iou_top``: IoU of the top-q fraction of pixels of the two maps (``q=0.1`` default); the top
  set has exactly ``ceil(q * H * W)`` pixels, ties broken by raster order (stable sort).
* ``max_abs_diff``: max |a/max|a| - b/max|b||, the "max difference" of the reference images.

Maps of different sizes are compared at the first map's size (bilinear resize).
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping

import numpy as np

from .pointing import saliency_2d, resize_map

DEFAULT_Q = 0.1


def _pair(a, b):
    a = saliency_2d(a)
    b = saliency_2d(b)
    if a.shape != b.shape:
        b = resize_map(b, *a.shape)
    return a, b


def pearson(a, b) -> float:
    a, b = _pair(a, b)
    a = a.reshape(-1) - a.mean()
    b = b.reshape(-1) - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if den == 0.0 or not math.isfinite(den):
        return float("nan")
    return float((a * b).sum() / den)


def top_mask(a, q: float = DEFAULT_Q) -> np.ndarray:
    """Bool mask of the ``ceil(q * size)`` largest pixels (ties: raster order)."""
    if not 0 < q <= 1:
        raise ValueError("q must be in (0, 1]")
    a = saliency_2d(a)
    flat = a.reshape(-1)
    n = max(1, int(math.ceil(q * flat.size - 1e-9)))
    idx = np.argsort(-flat, kind="stable")[:n]
    m = np.zeros(flat.size, dtype=np.bool_)
    m[idx] = True
    return m.reshape(a.shape)


def top_iou(a, b, q: float = DEFAULT_Q) -> float:
    a, b = _pair(a, b)
    ma, mb = top_mask(a, q), top_mask(b, q)
    union = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / union) if union else float("nan")


def max_abs_diff(a, b) -> float:
    a, b = _pair(a, b)
    na, nb = np.abs(a).max(), np.abs(b).max()
    if na == 0 or nb == 0:
        return float("nan")
    return float(np.abs(a / na - b / nb).max())


def discriminativeness_rows(image_id, maps: Mapping[str, Mapping[str, object]], *,
                            q: float = DEFAULT_Q) -> list:
    """Rows for one image: for each method and each unordered pair of classes (in the order of
    the method's dict), ``pearson``, ``iou_top`` and ``max_abs_diff``.
    ``maps``: method -> {class_name -> map}. Methods with fewer than two classes give no row."""
    rows = []
    for method, per_class in maps.items():
        names = list(per_class)
        for ca, cb in itertools.combinations(names, 2):
            a, b = per_class[ca], per_class[cb]
            rows.append({"image_id": str(image_id), "method": method, "class_a": ca, "class_b": cb,
                         "pearson": pearson(a, b), "iou_top": top_iou(a, b, q), "q": q,
                         "max_abs_diff": max_abs_diff(a, b)})
    return rows


def discriminativeness_summary(rows):
    """Per method: mean and median Pearson r, mean top-q IoU, number of pairs (NaN pairs --
    constant maps -- are excluded from the means and counted in ``n_undefined``)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["pearson_mean", "pearson_median", "iou_top_mean", "n_pairs", "n_undefined"])
    g = df.groupby("method", sort=False)
    out = pd.DataFrame({
        "pearson_mean": g["pearson"].mean(),
        "pearson_median": g["pearson"].median(),
        "iou_top_mean": g["iou_top"].mean(),
        "n_pairs": g.size(),
        "n_undefined": g["pearson"].apply(lambda s: int(s.isna().sum())),
    })
    out.attrs["settings"] = f"top-q IoU with q={sorted(df['q'].unique().tolist())}"
    return out


# ---------------------------------------------------------------------------------------------
# The protocol plug-in (see clrp.evaluation.protocol)

from dataclasses import dataclass  # noqa: E402

from .protocol import Chart, Protocol, register_protocol  # noqa: E402


@register_protocol
class Discriminativeness(Protocol):
    name, title, page = "discriminativeness", "Class-discriminativeness", "pointing"
    built_in = True
    description = "Pearson r and top-q IoU between the maps of two classes of one image (lower = more discriminative)"

    @dataclass
    class Options:
        q: float = DEFAULT_Q  # fraction of pixels in the top-q IoU

    def validate(self, o, run):
        if not 0 < float(o.q) <= 1:
            from ..errors import ClrpError
            raise ClrpError(f"q must be in (0, 1], got {o.q!r}")

    def rows(self, batch, o):
        out = []
        for i, plist in batch.pairs_of().items():
            if len(plist) >= 2:
                maps = {m: {c: batch.maps[m][k] for k, c, _ in plist} for m in batch.run.methods}
                out.extend(discriminativeness_rows(batch.samples[i].image_id, maps, q=o.q))
        return out

    def summary(self, df, options=None):
        return discriminativeness_summary(df)

    def charts(self, summary, rows=None):
        s = summary.reset_index()
        return [Chart("bar", "Pearson r between the maps of two classes of one image (lower = more discriminative)",
                      s, x="method", y="pearson_mean", y_title="mean Pearson r"),
                Chart("table", "Class-discriminativeness", s)]
