"""What ``python -m clrp evaluate`` and ``merge`` do around the runner: the image selection of
``--shard`` and ``--subset`` (:class:`FilteredDataset`), joining shards (:func:`merge_dirs`) and the
results tables they write and print (:func:`write_tables`). Never imports Streamlit."""
from __future__ import annotations

import hashlib
import os
import sys
from typing import Optional, Sequence

from ..errors import ClrpError

__all__ = ["shard_of", "parse_shard", "FilteredDataset", "merge_dirs", "write_tables", "print_summaries"]


def shard_of(image_id, count: int) -> int:
    """Shard (0 .. count-1) of an image id: SHA-1 of the id's UTF-8 bytes modulo ``count``."""
    h = hashlib.sha1(str(image_id).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") % int(count)


def parse_shard(text: Optional[str]):
    if not text:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ClrpError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ClrpError(f"--shard {text}: need 0 <= i < n")
    return i, n


class FilteredDataset:
    """A dataset seen through a filter on image ids (``--shard``, ``--subset`` with an id list).
    Delegates everything else (problems, class mapping, report) to the wrapped dataset."""

    def __init__(self, dataset, shard=None, ids=None):
        self._ds = dataset
        self._shard = shard
        self._ids = set(ids) if ids is not None else None

    def _keep(self, image_id) -> bool:
        if self._ids is not None and str(image_id) not in self._ids:
            return False
        if self._shard is not None and shard_of(image_id, self._shard[1]) != self._shard[0]:
            return False
        return True

    def samples(self):
        for s in self._ds.samples():
            if self._keep(s.image_id):
                yield s

    __iter__ = samples

    @property
    def unfiltered(self):
        """The whole dataset (its digest is recorded: merged shards must come from one dataset)."""
        return self._ds

    def __len__(self):
        ids = getattr(self._ds, "ids", None)
        if ids is None:
            raise TypeError("length unknown")
        return sum(1 for i in ids if self._keep(i))

    def __getattr__(self, name):
        return getattr(self._ds, name)


def merge_dirs(inputs: Sequence[str], out: str) -> dict:
    """Join the results of several runs (e.g. shards) into ``out`` (see
    :func:`clrp.evaluation.runs.merge`); the runs must agree on everything but the selection."""
    from .runner import run_identity
    from .runs import merge

    def comparable(settings):
        ident = dict(run_identity(settings))
        ident.pop("selection")
        ident.pop("dataset")  # each shard sees its own part of the dataset
        return ident

    merged = merge(inputs, out, comparable=comparable)
    shards = merged.get("shards") or []
    if shards and all(shards):
        n = {s[1] for s in shards}
        got = {s[0] for s in shards}
        if len(n) == 1 and got != set(range(next(iter(n)))):
            missing = sorted(set(range(next(iter(n)))) - got)
            print(f"note: shards {missing} of {next(iter(n))} are not among the inputs", file=sys.stderr)
    from .runs import RunFolder
    return {"images": len(RunFolder(out).read_progress().done)}


def write_tables(out_dir: str, print_summary: bool = True, stream=None) -> dict:
    """Write ``results/<protocol>.{csv,parquet}`` and ``summary/<protocol>.csv`` from the runner's
    parts in ``out_dir``; print the summary tables. Returns ``summarize(out_dir)``."""
    from .runner import load_results, summarize
    from .runs import flat_for_csv

    from ..fileio import makedirs, write_atomic, write_csv

    stream = stream or sys.stdout
    res = load_results(out_dir)
    makedirs(os.path.join(out_dir, "results"))
    makedirs(os.path.join(out_dir, "summary"))
    for proto, df in res.items():  # exports of the parts: a failed write leaves the run resumable
        table = os.path.join(out_dir, "results", proto)
        write_atomic(table + ".parquet", lambda p: df.to_parquet(p, index=False))
        write_atomic(table + ".csv", lambda p: write_csv(flat_for_csv(df), p))
    summ = summarize(res)
    for proto, table in summ.items():
        write_atomic(os.path.join(out_dir, "summary", f"{proto}.csv"), lambda p: write_csv(table, p, index=True))
    if print_summary:
        print_summaries(summ, stream)
    return summ


def print_summaries(summ: dict, stream=None) -> None:
    import pandas as pd

    stream = stream or sys.stdout
    with pd.option_context("display.width", 160, "display.max_columns", 40, "display.float_format",
                           "{:.4f}".format):
        for proto, table in summ.items():
            print(f"\n== {proto} ==", file=stream)
            if table is None or len(table) == 0:
                print("(no rows)", file=stream)
                continue
            if proto == "pointing":
                main_cols = [c for c in table.columns if not str(c).startswith("class:")]
                print(table[main_cols].to_string(), file=stream)
                per_class = table[[c for c in table.columns if str(c).startswith("class:")]]
                if per_class.shape[1]:
                    print("\nper-class accuracy (all):", file=stream)
                    print(per_class.rename(columns=lambda c: c[6:]).T.to_string(), file=stream)
            else:
                print(table.to_string(), file=stream)
            note = table.attrs.get("settings") if hasattr(table, "attrs") else None
            if note:
                print(f"({note})", file=stream)
