"""Time LRP/CLRP against a plain input gradient, zennit and captum in one run, on the same inputs.

    python benchmarks/bench_engine.py --models vgg16 resnet50 efficientnet_b0 --batch 1 8 --reps 5

Prints a Markdown table per model and batch size: median seconds and ratios to the plain gradient.
zennit and captum are test/benchmark-only dependencies (requirements-dev.txt). torchvision models
with random weights, 224x224. zennit gets its canonizers (ResNetCanonizer for ResNets, otherwise
SequentialMergeBatchNorm); captum's LRP is timed where it runs (it refuses residual adds written
as ``+`` and non-ReLU activations) and the table says why where it does not.
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


def _unchecked(fn):
    from clrp.engine import plan
    plan._CHECK_CONTENTS = False
    try:
        return fn()
    finally:
        plan._CHECK_CONTENTS = True


def make_zennit(model, name):
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlus
    from zennit.torchvision import ResNetCanonizer

    canonizers = [ResNetCanonizer()] if name.startswith(("resnet", "resnext")) else [SequentialMergeBatchNorm()]

    def run(x, t):
        with Gradient(model=model, composite=EpsilonPlus(canonizers=canonizers)) as attributor:
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
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet50", "efficientnet_b0"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--order", choices=["interleaved", "grouped"], default="interleaved",
                   help="interleaved: one run of every method per round (drift hits all alike); grouped: all "
                        "runs of one method back to back (no cross-method allocator state)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="time only the runners whose name contains one of these words (the plain gradient always)")
    p.add_argument("--check-cost", action="store_true",
                   help="also time clrp lrp/clrp2 without the weight cache's content check (stale after "
                        "param.data edits: only to measure what the check costs, issue 17)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"# clrp engine benchmark: {', '.join(args.models)} (random weights), {args.size}x{args.size}, {device}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f"{', ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, median of {args.reps} runs "
          f"(after one warm-up), runs {args.order}\n")
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name).eval().to(device)
        # Hook-based libraries need out-of-place ReLUs (captum refuses in-place ones); clrp uses the original.
        hooked = copy.deepcopy(model)
        for m in hooked.modules():
            if isinstance(m, torch.nn.ReLU):
                m.inplace = False
        for p_ in hooked.parameters():
            p_.requires_grad_(False)
        runners = {
            "plain gradient (autograd)": lambda x, t: plain_gradient(hooked, x, t),
            "zennit EpsilonPlus": make_zennit(hooked, name),
            "captum LRP": make_captum(hooked),
            "clrp lrp (paper rules)": lambda x, t: clrp.explain(model, x, t, "lrp", rules="paper"),
            "clrp lrp (epsilon_plus)": lambda x, t: clrp.explain(model, x, t, "lrp", rules="epsilon_plus"),
            "clrp clrp2 (paper rules)": lambda x, t: clrp.explain(model, x, t, "clrp2", rules="paper"),
            "clrp clrp1 (paper rules)": lambda x, t: clrp.explain(model, x, t, "clrp1", rules="paper"),
        }
        if args.check_cost:
            from clrp.engine.plan import fingerprint
            tensors = [*model.parameters(), *model.buffers()]  # every tensor a cached entry may come from
            runners["weight checksum alone (all weights)"] = lambda x, t: [fingerprint(p) for p in tensors]
            runners["clrp lrp (paper rules), no content check"] = lambda x, t: _unchecked(
                lambda: clrp.explain(model, x, t, "lrp", rules="paper"))
            runners["clrp clrp2 (paper rules), no content check"] = lambda x, t: _unchecked(
                lambda: clrp.explain(model, x, t, "clrp2", rules="paper"))
        if args.methods:
            runners = {n: fn for n, fn in runners.items()
                       if n.startswith("plain gradient") or any(w in n for w in args.methods)}
        for batch in args.batch:
            x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch)).to(device)
            t = (torch.arange(batch) * 7 % 1000).to(device)
            times, failed = {n: [] for n in runners}, {}
            for n, fn in runners.items():
                try:
                    fn(x, t)  # warm-up (allocations, caches, clrp's one-off trace)
                except Exception as exc:  # captum refuses some graphs
                    failed[n] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
            live = [n for n in runners if n not in failed]
            rounds = [live] * args.reps if args.order == "interleaved" else [[n] * args.reps for n in live]
            for names in rounds:
                for n in names:
                    sync()
                    start = time.perf_counter()
                    runners[n](x, t)
                    sync()
                    times[n].append(time.perf_counter() - start)
            base = statistics.median(times["plain gradient (autograd)"])
            print(f"## {name}, batch {batch}\n")
            print("| method | median s | x plain gradient |")
            print("|---|---:|---:|")
            for n in runners:
                if n in failed:
                    print(f"| {n} | does not run: {failed[n]} | |")
                else:
                    med = statistics.median(times[n])
                    print(f"| {n} | {med:.3f} | {med / base:.2f} |")
            med = {n: statistics.median(v) for n, v in times.items() if v}
            ours = med.get("clrp lrp (paper rules)")
            line = []
            if ours and "zennit EpsilonPlus" in med:
                line.append(f"zennit / clrp lrp: {med['zennit EpsilonPlus'] / ours:.2f}x")
            if ours and "captum LRP" in med:
                line.append(f"captum / clrp lrp: {med['captum LRP'] / ours:.2f}x")
            if ours and "clrp clrp2 (paper rules)" in med:
                line.append(f"clrp2 / lrp: {med['clrp clrp2 (paper rules)'] / ours:.2f}x")
            print("\n" + ", ".join(line) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
