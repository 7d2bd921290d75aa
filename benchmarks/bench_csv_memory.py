"""Peak memory of reading a CSV of boxes (``clrp.datasets.CsvDataset``), per MB of file.

    python benchmarks/bench_csv_memory.py [--mb 100] [--boxes-per-image 3] [--code DIR] [--json out.json]

Writes a CSV of about ``--mb`` MB (``filename,class,xmin,ymin,xmax,ymax``, images named like COCO's,
``--boxes-per-image`` rows per image, 20 classes, coordinates with one decimal), then reads it in a
fresh child process: the child records its peak RSS (``ru_maxrss``) after importing clrp and after
opening the dataset and listing its classes; the difference is the reader's peak. Reported: file
size, peak RSS delta, their ratio, rows, images. The child measures itself so the figure does not
include the generator's memory. ``--code DIR``: measure the ``clrp`` package found in DIR instead of
this checkout's (e.g. an older commit's, from ``git archive <commit> clrp | tar -x -C DIR``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, resource, sys
from clrp.datasets import CsvDataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ds = CsvDataset(sys.argv[1])
n_images, n_classes = len(ds), len(ds.class_names())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_delta_bytes": (after - before) * 1024, "images": n_images, "classes": n_classes}))
"""


def write_csv(path: str, mb: float, boxes_per_image: int = 3) -> int:
    """A CSV of about ``mb`` MB of boxes; returns its number of rows."""
    target = int(mb * 1024 ** 2)
    rows = 0
    with open(path, "w", newline="") as f:
        f.write("filename,class,xmin,ymin,xmax,ymax\n")
        size = 0
        while size < target:
            image, k = divmod(rows, boxes_per_image)
            x, y = (rows * 37) % 500, (rows * 53) % 400
            line = f"{image:012d}.jpg,class{(rows * 7) % 20},{x}.5,{y}.5,{x + 10 + k}.5,{y + 20}.5\n"
            f.write(line)
            size += len(line)
            rows += 1
    return rows


def measure(path: str, code: str | None = None) -> dict:
    """Read ``path`` in a child process; the child's peak RSS delta and the file size."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    repo = code or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, env=env,
                         check=True, cwd=repo)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["file_bytes"] = os.path.getsize(path)
    res["ratio"] = res["peak_delta_bytes"] / res["file_bytes"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=100.0)
    ap.add_argument("--boxes-per-image", type=int, default=3)
    ap.add_argument("--code", help="folder holding the clrp package to measure (default: this checkout)")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clrp-csv-bench-") as d:
        path = os.path.join(d, "boxes.csv")
        rows = write_csv(path, a.mb, a.boxes_per_image)
        res = dict(measure(path, a.code), rows=rows)
    print(f"CSV of {res['file_bytes'] / 1024 ** 2:.1f} MiB ({rows:,} rows, {res['images']:,} images): "
          f"peak RSS +{res['peak_delta_bytes'] / 1024 ** 2:.1f} MiB = {res['ratio']:.2f}x the file size")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
