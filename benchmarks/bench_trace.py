"""How long the first explanation of a model takes (the trace), before and after the trace cache.

    python benchmarks/bench_trace.py --before 8d09ecf --models resnet18 densenet121 efficientnet_b0

Each measurement is a fresh Python process (imports done before the clock starts) explaining
one torchvision model (random weights, 1 x 3 x 64 x 64, ``lrp`` with ``epsilon_plus``) twice:
"first" includes the trace, "second" is the cost of an explanation. Variants, interleaved per
model so that they share the machine's load:

- ``before``: the code of git revision ``--before`` (extracted with ``git archive``);
- ``cold``: this checkout with an empty trace cache (``torch.export`` runs; its share is shown);
- ``cached``: this checkout again, in a new process, reading the graph the cold run stored.

Prints a Markdown table; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch, torchvision, clrp
from clrp.engine import trace as T
torch.manual_seed(0)
model = getattr(torchvision.models, sys.argv[2])().eval()
x = torch.randn(1, 3, 64, 64)
spent = {"export": 0.0}
original = T._export
def timed(*a, **k):
    t = time.perf_counter()
    try:
        return original(*a, **k)
    finally:
        spent["export"] += time.perf_counter() - t
T._export = timed
t = time.perf_counter(); clrp.explain(model, x, 1, "lrp", rules="epsilon_plus"); first = time.perf_counter() - t
t = time.perf_counter(); clrp.explain(model, x, 1, "lrp", rules="epsilon_plus"); second = time.perf_counter() - t
print(json.dumps({"first": first, "second": second, "export": spent["export"]}))
"""


def code_at(rev: str, folder: Path) -> Path:
    """The ``clrp`` package of git revision ``rev``, extracted under ``folder`` (returns the folder
    to put on ``sys.path``)."""
    root = folder / f"clrp-{rev}"
    root.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "clrp"], capture_output=True, check=True).stdout
    archive_path = folder / f"clrp-{rev}.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(root, filter="data")
    return root


def run(code_root: Path, model: str, cache: str, threads: int) -> dict:
    env = {**os.environ, "CLRP_TRACE_CACHE": cache, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(code_root), model], env=env, capture_output=True,
                         text=True, check=True, cwd=code_root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="HEAD", help="git revision of the 'before' code")
    ap.add_argument("--models", nargs="+", default=["resnet18", "densenet121", "efficientnet_b0", "vgg16",
                                                    "mobilenet_v3_small", "convnext_tiny"])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = code_at(a.before, Path(tmp))
        rows = []
        for model in a.models:
            res = {"before": [], "cold": [], "cached": []}
            for rep in range(a.reps):
                cache = str(Path(tmp) / f"cache-{model}-{rep}")
                res["before"].append(run(before, model, "off", a.threads))
                res["cold"].append(run(ROOT, model, cache, a.threads))
                res["cached"].append(run(ROOT, model, cache, a.threads))
            med = {k: {f: statistics.median(r[f] for r in v) for f in ("first", "second", "export")}
                   for k, v in res.items()}
            rows.append((model, med))
            print(f"{model}: {json.dumps(med)}", file=sys.stderr)
    print(f"Fresh process per cell, {a.threads} torch thread(s), median of {a.reps}; seconds.\n")
    print("| model | before: first | before: second | cold: first | of which export | cached: first | cached: second "
          "| first call, before / cached |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for model, m in rows:
        print(f"| {model} | {m['before']['first']:.2f} | {m['before']['second']:.2f} | {m['cold']['first']:.2f} | "
              f"{m['cold']['export']:.2f} | {m['cached']['first']:.2f} | {m['cached']['second']:.2f} | "
              f"{m['before']['first'] / m['cached']['first']:.1f}x |")


if __name__ == "__main__":
    main()
