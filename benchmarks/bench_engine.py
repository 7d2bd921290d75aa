"""Time LRP/CLRP against a plain input gradient, zennit, captum, Grad-CAM and integrated gradients
in one run, on the same inputs, on the CPU or a GPU.

    python benchmarks/bench_engine.py --models vgg16 resnet50 efficientnet_b0 vit_b_16 --batch 1 8 64 --device cuda
    python benchmarks/bench_engine.py --models vgg16 --batch 1 8 --reps 3 --ig-steps 8 --device cpu

Prints a Markdown table per model and batch size: median seconds, images/s, ratio to the plain
gradient and peak memory (``torch.cuda.max_memory_allocated`` above the baseline on a GPU, the
sampled RSS increase on the CPU: benchmarks/memory.py). zennit and captum are
test/benchmark-only dependencies (requirements-dev.txt). torchvision models with random weights,
224x224. zennit gets its canonizers (ResNetCanonizer for ResNets, otherwise
SequentialMergeBatchNorm); captum's LRP is timed where it runs (it refuses residual adds written
as ``+`` and non-ReLU activations) and the table says why where it does not; the LRP family does
not run on vit_b_16 (attention), which the table says too. ``--device auto`` follows
clrp.devices (CUDA when available). On CUDA, TF32 stays at PyTorch's defaults.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
import clrp  # noqa: E402
from clrp.devices import describe, resolve_device  # noqa: E402
from memory import memory_kind, peak_memory  # noqa: E402


def plain_gradient(model, x, t):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), x)
    return g


def _unchecked(fn):
    from clrp.engine import plan
    plan.CHECK_CONTENTS = False
    try:
        return fn()
    finally:
        plan.CHECK_CONTENTS = True


def make_zennit(model, name):
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlus
    from zennit.torchvision import ResNetCanonizer

    canonizers = [ResNetCanonizer()] if name.startswith(("resnet", "resnext")) else [SequentialMergeBatchNorm()]

    def run(x, t):
        with Gradient(model=model, composite=EpsilonPlus(canonizers=canonizers)) as attributor:
            _, rel = attributor(x.clone().requires_grad_(True), torch.eye(1000, device=x.device)[t])
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
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet50", "efficientnet_b0", "vit_b_16"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (clrp.devices)")
    p.add_argument("--ig-steps", type=int, default=50, help="integrated gradients steps (50: the VOC runs' setting)")
    p.add_argument("--only", nargs="+", help="time only the methods whose names contain one of these words")
    p.add_argument("--order", choices=["interleaved", "grouped"], default="interleaved",
                   help="interleaved: one run of every method per round (drift hits all alike); grouped: all "
                        "runs of one method back to back (no cross-method allocator state)")
    p.add_argument("--check-cost", action="store_true",
                   help="also time clrp lrp/clrp2 without the weight cache's content check (stale after "
                        "param.data edits: only to measure what the check costs, issue 17)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"# clrp engine benchmark: {', '.join(args.models)} (random weights), {args.size}x{args.size}, "
          f"{describe(device)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
          f", median of {args.reps} runs (after one warm-up), runs {args.order}; memory: {memory_kind(device)}; "
          f"integrated gradients with {args.ig_steps} steps\n")
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
            "clrp Grad-CAM": lambda x, t: clrp.explain(model, x, t, "gradcam"),
            "clrp integrated gradients": lambda x, t: clrp.explain(model, x, t, "integrated_gradients",
                                                                   steps=args.ig_steps),
        }
        if args.check_cost:
            from clrp.engine.plan import fingerprint
            tensors = [*model.parameters(), *model.buffers()]  # every tensor a cached entry may come from
            runners["weight checksum alone (all weights)"] = lambda x, t: [fingerprint(p) for p in tensors]
            runners["clrp lrp (paper rules), no content check"] = lambda x, t: _unchecked(
                lambda: clrp.explain(model, x, t, "lrp", rules="paper"))
            runners["clrp clrp2 (paper rules), no content check"] = lambda x, t: _unchecked(
                lambda: clrp.explain(model, x, t, "clrp2", rules="paper"))
        if args.only:
            runners = {n: f for n, f in runners.items() if n.startswith("plain") or any(w in n for w in args.only)}
        for batch in args.batch:
            x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(batch)).to(device)
            t = (torch.arange(batch) * 7 % 1000).to(device)
            times, failed, peaks = {n: [] for n in runners}, {}, {}
            for n, fn in runners.items():
                try:
                    fn(x, t)  # warm-up (allocations, caches, clrp's one-off trace)
                    peaks[n] = peak_memory(lambda: fn(x, t), device)[1]
                except Exception as exc:  # captum refuses some graphs, the LRP family refuses attention
                    failed[n] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            live = [n for n in runners if n not in failed]
            rounds = [live] * args.reps if args.order == "interleaved" else [[n] * args.reps for n in live]
            for names in rounds:
                for n in names:
                    sync()
                    start = time.perf_counter()
                    runners[n](x, t)
                    sync()
                    times[n].append(time.perf_counter() - start)
            med = {n: statistics.median(v) for n, v in times.items() if v}
            base = med["plain gradient (autograd)"]
            print(f"## {name}, batch {batch}\n")
            print("| method | median s | images/s | x plain gradient | peak MiB |")
            print("|---|---:|---:|---:|---:|")
            for n in runners:
                if n in failed:
                    print(f"| {n} | does not run: {failed[n]} | | | |")
                else:
                    print(f"| {n} | {med[n]:.3f} | {batch / med[n]:.1f} | {med[n] / base:.2f} | "
                          f"{peaks[n] / 2 ** 20:.0f} |")
            line = []
            ours = med.get("clrp lrp (paper rules)")
            if ours:
                for other, label in (("zennit EpsilonPlus", "zennit"), ("captum LRP", "captum")):
                    if other in med:
                        line.append(f"{label} / clrp lrp: {med[other] / ours:.2f}x")
                if "clrp clrp2 (paper rules)" in med:
                    line.append(f"clrp2 / lrp: {med['clrp clrp2 (paper rules)'] / ours:.2f}x")
            print("\n" + ", ".join(line) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
