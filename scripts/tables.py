"""The markdown tables of the generated documents (``scripts/docs/make_results.py``,
``scripts/research/depth_study.py``)."""
from __future__ import annotations

import math

import numpy as np


def md_table(df, floatfmt: str = "{:.3f}", index: bool = True) -> str:
    """A DataFrame as a markdown table: floats with ``floatfmt`` (NaN as an empty cell), whole
    floats in a count column (a name starting with ``n``) as integers, anything else as ``str``;
    the index is the first column unless ``index=False``."""
    cols = list(df.columns)
    head = ([str(df.index.name or "")] if index else []) + [str(c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        cells = [str(idx)] if index else []
        for c in cols:
            v = row[c]
            if isinstance(v, (float, np.floating)) and str(c).startswith("n") and not math.isnan(v) and v == int(v):
                cells.append(str(int(v)))
            elif isinstance(v, (float, np.floating)):
                cells.append("" if math.isnan(v) else floatfmt.format(v))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
