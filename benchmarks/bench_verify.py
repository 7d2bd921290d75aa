"""What verifying a run folder on resume costs: reading each part's rows vs its footer only.

    python benchmarks/bench_verify.py --scenes 8 --batch 8 --repeats 20

Evaluates ``--scenes`` bundled scenes with the bundled model (every protocol, lrp and clrp2,
default options: 100 perturbation steps), one batch of ``--batch`` images, so each protocol
writes one part of a typical batch; then times, per part, reading the footer's row count
(``pyarrow.parquet.ParquetFile(...).metadata``, what ``RunFolder.verify`` did before),
reading the rows with ``ParquetFile(...).read()`` (what it does now) and with
``pyarrow.parquet.read_table`` (the dataset API: slower); medians of ``--repeats``.
The files are in the page cache (a resume right after a crash); a cold disk adds its read time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clrp import models, scenes  # noqa: E402
from clrp.datasets import open_dataset  # noqa: E402
from clrp.evaluation import runner as R  # noqa: E402
from clrp.evaluation.runs import RunFolder  # noqa: E402


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    import pyarrow.parquet as pq

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = scenes.voc_cache(a.scenes, scenes.EVALUATION_SEED, tmp)
        out = os.path.join(tmp, "run")
        R.run_evaluation(open_dataset(root, "voc", split="test"), models.load("bundled"), out,
                         methods=("lrp", "clrp2"), protocols=R.PROTOCOLS, batch_size=a.batch)
        folder = RunFolder(out)
        print(f"| part ({a.batch} images) | rows | size | footer only | rows read (verify) | read_table |")
        print("|---|---:|---:|---:|---:|---:|")
        for proto in folder.protocol_dirs():
            path = folder.part_path(proto, 1)
            footer = median_ms(lambda: pq.ParquetFile(path).metadata.num_rows, a.repeats)
            rows = median_ms(lambda: folder._part_rows(path), a.repeats)
            table = median_ms(lambda: pq.read_table(path).num_rows, a.repeats)
            print(f"| {proto} | {folder._part_rows(path)} | {os.path.getsize(path) / 1024:.0f} KiB "
                  f"| {footer:.2f} ms | {rows:.2f} ms | {table:.2f} ms |")
        prog = folder.read_progress()
        whole = median_ms(lambda: folder.verify(prog, folder.protocol_dirs()), a.repeats)
        print(f"\nRunFolder.verify of the batch (all its parts): {whole:.2f} ms")


if __name__ == "__main__":
    main()
