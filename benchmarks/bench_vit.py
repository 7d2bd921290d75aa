"""Time LRP/CLRP on a vision transformer against a plain input gradient and lxt, in one run.

    python benchmarks/bench_vit.py --batch 1 8 --reps 3

torchvision vit_b_16 with random weights, 224x224. lxt (LRP-eXplains-Transformers, test/benchmark
dependency) runs its documented recipe for torchvision's ViT: its patches (CP-LRP attention,
identity on GELU, LayerNorm with the deviation detached) and zennit's Gamma on Conv2d/Linear
modules, gradient times input; "lxt AttnLRP" swaps in lxt's AttnLRP attention wrapper. clrp runs
the matching presets (``cp_lrp``, ``attnlrp``). Runs are interleaved (drift hits all alike);
median of ``--reps`` after one warm-up (which includes clrp's one-off trace). "four-product gamma"
is clrp's ``attnlrp`` with the gamma rule as zennit writes it (the same numbers, the cost before
clrp shared the products); ``--only`` keeps a subset (the plain gradient always runs).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import clrp  # noqa: E402
from tests.test_transformers import FourProductGamma, lxt_lrp  # noqa: E402  (the oracle's harness)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import plain_gradient  # noqa: E402


# AttnLRP with epsilon instead of gamma on the dense layers (what lxt does on language models): the
# engine's cost without gamma's four products per layer
EPSILON = dataclasses.replace(clrp.rules.RULES["attnlrp"], linear=clrp.rules.Epsilon())
# AttnLRP with the gamma rule as zennit writes it (four products, four transposes per dense layer with
# inputs of both signs): clrp's gamma before it shared the products, same numbers
FOUR_PRODUCTS = dataclasses.replace(clrp.rules.RULES["attnlrp"], linear=FourProductGamma(0.05),
                                    conv=FourProductGamma(0.25))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_b_16")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                   help="run only the methods whose name contains one of these (the plain gradient always runs)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision initialises the head to zero
    frozen = torchvision.models.get_model(args.model).eval()
    frozen.load_state_dict(model.state_dict())
    for p_ in frozen.parameters():
        p_.requires_grad_(False)
    runners = {
        "plain gradient (autograd)": lambda x, t: plain_gradient(frozen, x, t),
        "lxt CP-LRP (its ViT recipe)": lambda x, t: lxt_lrp(frozen, x, t, "cp"),
        "lxt AttnLRP": lambda x, t: lxt_lrp(frozen, x, t, "attnlrp"),
        "clrp lrp (cp_lrp)": lambda x, t: clrp.explain(model, x, t, "lrp", rules="cp_lrp"),
        "clrp lrp (attnlrp)": lambda x, t: clrp.explain(model, x, t, "lrp", rules="attnlrp"),
        "clrp clrp2 (cp_lrp)": lambda x, t: clrp.explain(model, x, t, "clrp2", rules="cp_lrp"),
        "clrp clrp2 (attnlrp)": lambda x, t: clrp.explain(model, x, t, "clrp2", rules="attnlrp"),
        "clrp lrp (attnlrp, epsilon on dense layers)": lambda x, t: clrp.explain(model, x, t, "lrp", rules=EPSILON),
        "clrp lrp (attnlrp, four-product gamma)": lambda x, t: clrp.explain(model, x, t, "lrp", rules=FOUR_PRODUCTS),
    }
    if args.only:
        runners = {n: fn for n, fn in runners.items() if n.startswith("plain") or any(o in n for o in args.only)}
    print(f"# clrp on {args.model} (random weights), 224x224, cpu; load average {os.getloadavg()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"median of {args.reps} interleaved runs after one warm-up\n")
    for batch in args.batch:
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
        t = torch.arange(batch) * 7 % 1000
        for fn in runners.values():
            fn(x, t)
        times = {n: [] for n in runners}
        for _ in range(args.reps):
            for n, fn in runners.items():
                start = time.perf_counter()
                fn(x, t)
                times[n].append(time.perf_counter() - start)
        med = {n: statistics.median(v) for n, v in times.items()}
        base = med["plain gradient (autograd)"]
        print(f"## batch {batch}\n\n| method | median s | x plain gradient |\n|---|---:|---:|")
        for n in runners:
            print(f"| {n} | {med[n]:.3f} | {med[n] / base:.2f} |")
        pairs = [("lxt / clrp lrp (CP-LRP)", "lxt CP-LRP (its ViT recipe)", "clrp lrp (cp_lrp)"),
                 ("lxt / clrp lrp (AttnLRP)", "lxt AttnLRP", "clrp lrp (attnlrp)"),
                 ("clrp2 / lrp (cp_lrp)", "clrp clrp2 (cp_lrp)", "clrp lrp (cp_lrp)"),
                 ("clrp2 / lrp (attnlrp)", "clrp clrp2 (attnlrp)", "clrp lrp (attnlrp)"),
                 ("four-product / shared gamma", "clrp lrp (attnlrp, four-product gamma)", "clrp lrp (attnlrp)")]
        print("\n" + "; ".join(f"{label}: {med[a] / med[b]:.2f}x" for label, a, b in pairs if a in med and b in med))
        print(f"load average after batch {batch}: {os.getloadavg()}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
