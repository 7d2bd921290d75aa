"""`lrp` / plain gradient of two versions of clrp on the same machine, run alternately.

    python benchmarks/bench_engine_ab.py --before 0731666 --model vgg16 --batch 8 --reps 3 --rounds 2

A ratio measured on another day is not comparable: the machine moves it. This script extracts
the ``clrp`` package of ``--before`` (``git archive``, as bench_trace.py) and times, in separate
processes taking turns (before, now, before, now, ...), the plain input gradient and clrp's
``lrp`` (paper rules) on the same torchvision model with random weights; each process prints the
median of ``--reps`` interleaved runs after a warm-up (which includes the trace).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trace import code_at  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch, torchvision, clrp
torch.manual_seed(0)
model = getattr(torchvision.models, sys.argv[2])().eval()
n, reps = int(sys.argv[3]), int(sys.argv[4])
x = torch.rand(n, 3, 224, 224)
t = torch.zeros(n, dtype=torch.long)

def gradient():
    xi = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(xi).gather(1, t[:, None]).sum(), xi)[0]

def lrp():
    return clrp.explain(model, x, t, "lrp", rules="paper")

gradient(); lrp()
g, r = [], []
for _ in range(reps):
    a = time.perf_counter(); gradient(); g.append(time.perf_counter() - a)
    a = time.perf_counter(); lrp(); r.append(time.perf_counter() - a)
print(json.dumps({"gradient_s": statistics.median(g), "lrp_s": statistics.median(r)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision of the 'before' code")
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        versions = {a.before: code_at(a.before, Path(tmp)), "now": ROOT}
        print(f"| round | code | plain gradient s | lrp s | lrp / gradient | load average |")
        print("|---:|---|---:|---:|---:|---|")
        for k in range(a.rounds):
            for name, root in versions.items():
                out = subprocess.run([sys.executable, "-c", WORKER, str(root), a.model, str(a.batch), str(a.reps)],
                                     capture_output=True, text=True, check=True, cwd=tmp)
                m = json.loads(out.stdout.strip().splitlines()[-1])
                load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
                print(f"| {k + 1} | {name} | {m['gradient_s']:.3f} | {m['lrp_s']:.3f} | "
                      f"{m['lrp_s'] / m['gradient_s']:.2f} | {load} |", flush=True)


if __name__ == "__main__":
    main()
