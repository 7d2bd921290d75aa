"""Region perturbation: batched vs naive (one forward per step). Usage:

    python benchmarks/perturbation_bench.py [--size 224] [--steps 100] [--batch 32] [--model vgg16|small]

Prints wall time of both and checks that the curves agree. ``vgg16`` uses random weights (no
download); the timing is what matters.
"""
import argparse
import time

import numpy as np
import torch

from clrp.evaluation.perturbation import region_perturbation, region_perturbation_naive


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="small", choices=["small", "vgg16"])
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model == "vgg16":
        import torchvision

        net = torchvision.models.vgg16(weights=None).eval()
    else:
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    x = torch.randn(3, a.size, a.size)
    rel = torch.randn(a.size, a.size)
    kw = dict(order="morf", patch=a.patch, steps=a.steps, baseline="mean")
    with torch.no_grad():  # warm-up (allocator, kernels) so neither variant pays it
        net(torch.cat([x[None]] * min(a.batch, 4)))
        net(x[None])
    t0 = time.perf_counter()
    b = region_perturbation(net, x, rel, 1, batch_size=a.batch, **kw)
    t1 = time.perf_counter()
    n = region_perturbation_naive(net, x, rel, 1, **kw)
    t2 = time.perf_counter()
    print(f"{a.model} {a.size}px, {a.steps} steps of {a.patch}x{a.patch}: batched (batch {a.batch}) "
          f"{t1 - t0:.2f} s, naive {t2 - t1:.2f} s, speed-up x{(t2 - t1) / max(t1 - t0, 1e-9):.1f}; "
          f"max |difference| {np.abs(b.scores - n.scores).max():.2e}")


if __name__ == "__main__":
    main()
