"""Time LRP/CLRP against a plain input gradient, zennit and captum in one run, on the same inputs.

    python benchmarks/bench_engine.py --batch 1 8 --reps 5

Prints a Markdown table of median seconds and ratios to the plain gradient. zennit and captum are
test/benchmark-only dependencies (requirements-dev.txt). VGG16 with random weights, 224x224.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import clrp  # noqa: E402


def plain_gradient(model, x, t):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), x)
    return g


def make_zennit(model):
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus

    def run(x, t):
        with Gradient(model=model, composite=EpsilonPlus()) as attributor:
            _, rel = attributor(x.clone().requires_grad_(True), torch.eye(1000)[t])
        return rel
    return run


def make_captum(model):
    from captum.attr import LRP

    lrp = LRP(model)

    def run(x, t):
        return lrp.attribute(x.clone().requires_grad_(True), target=t)
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--order", choices=["interleaved", "grouped"], default="interleaved",
                   help="interleaved: one run of every method per round (drift hits all alike); grouped: all "
                        "runs of one method back to back (no cross-method allocator state)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.vgg16().eval()
    # Hook-based libraries need out-of-place ReLUs (captum refuses in-place ones); clrp uses the original.
    hooked = copy.deepcopy(model)
    for m in hooked.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    for p_ in hooked.parameters():
        p_.requires_grad_(False)

    runners = {
        "plain gradient (autograd)": lambda x, t: plain_gradient(hooked, x, t),
        "zennit EpsilonPlus": make_zennit(hooked),
        "captum LRP": make_captum(hooked),
        "clrp lrp (paper rules)": lambda x, t: clrp.explain(model, x, t, "lrp", rules="paper"),
        "clrp lrp (epsilon_plus)": lambda x, t: clrp.explain(model, x, t, "lrp", rules="epsilon_plus"),
        "clrp clrp2 (paper rules)": lambda x, t: clrp.explain(model, x, t, "clrp2", rules="paper"),
        "clrp clrp1 (paper rules)": lambda x, t: clrp.explain(model, x, t, "clrp1", rules="paper"),
    }
    print(f"# clrp engine benchmark: VGG16 (random weights), {args.size}x{args.size}, CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"median of {args.reps} runs (after one warm-up), runs {args.order}\n")
    for batch in args.batch:
        x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch))
        t = torch.arange(batch) * 7 % 1000
        times = {name: [] for name in runners}
        for name, fn in runners.items():
            fn(x, t)  # warm-up (allocations, caches)
        rounds = ([list(runners)] * args.reps if args.order == "interleaved"
                  else [[name] * args.reps for name in runners])
        for names in rounds:
            for name in names:
                start = time.perf_counter()
                runners[name](x, t)
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["plain gradient (autograd)"])
        print(f"## batch {batch}\n")
        print("| method | median s | x plain gradient |")
        print("|---|---:|---:|")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {med:.3f} | {med / base:.2f} |")
        ours = statistics.median(times["clrp lrp (paper rules)"])
        print(f"\nzennit / clrp lrp: {statistics.median(times['zennit EpsilonPlus']) / ours:.2f}x, "
              f"captum / clrp lrp: {statistics.median(times['captum LRP']) / ours:.2f}x, "
              f"clrp2 / lrp: {statistics.median(times['clrp clrp2 (paper rules)']) / ours:.2f}x\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
