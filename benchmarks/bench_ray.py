"""Pointing Game throughput locally and on a local Ray cluster, in one run; per-pair costs.

    python benchmarks/bench_ray.py --scenes 300 --methods lrp,clrp2 --workers 2
    python benchmarks/bench_ray.py --pair-costs --models resnet50 vgg16 --pairs 3

The first form evaluates the same bundled scenes with the bundled model three times: locally with
one torch thread, locally with ``--workers`` threads, and on a local Ray instance with
``--workers`` actors of one thread each; it prints images per second and Ray's overhead per image
(the extra worker-seconds an image costs on Ray: ``(t_ray * workers - t_local_1thread) / images``;
Ray's start-up, which a long run pays once, is timed separately). The second form times every
method of ``clrp.METHODS`` on random (image, class) pairs of a torchvision model at 224 px (random
weights), the per-pair cost an estimate of a full dataset's wall time multiplies.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import clrp  # noqa: E402
from clrp import models, scenes  # noqa: E402
from clrp.datasets import open_dataset  # noqa: E402
from clrp.evaluation import runner as R  # noqa: E402


def throughput(a):
    from clrp.evaluation.distributed import RayExecutor

    methods = tuple(a.methods.split(","))
    lm = models.load("bundled")
    with tempfile.TemporaryDirectory() as tmp:
        root = scenes.voc_cache(a.scenes, scenes.EVALUATION_SEED, tmp)
        settings = dict(methods=methods, protocols=("pointing",), batch_size=a.batch)
        times = {}
        for threads in sorted({1, a.workers}):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            R.run_evaluation(open_dataset(root, "voc", split="test"), lm, os.path.join(tmp, f"local{threads}"), **settings)
            times[f"local, {threads} thread(s)"] = time.perf_counter() - start
        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=a.workers, include_dashboard=False, logging_level="ERROR",
                 _node_ip_address="127.0.0.1")
        startup = time.perf_counter() - start
        ex = RayExecutor(workers=a.workers)
        start = time.perf_counter()
        R.run_evaluation(open_dataset(root, "voc", split="test"), lm, os.path.join(tmp, "ray"), executor=ex, **settings)
        times[f"Ray, {a.workers} workers x 1 thread"] = time.perf_counter() - start
        ray.shutdown()
    print(f"# Pointing Game throughput: bundled model, {a.scenes} scenes, methods {', '.join(methods)}, "
          f"batches of {a.batch}")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}\n")
    print("| run | wall s | images/s |")
    print("|---|---:|---:|")
    for k, t in times.items():
        print(f"| {k} | {t:.1f} | {a.scenes / t:.2f} |")
    t1 = times["local, 1 thread(s)"]
    tr = times[f"Ray, {a.workers} workers x 1 thread"]
    print(f"\nRay start-up (ray.init, once per run): {startup:.1f} s; actor start-up and model transfer are in the "
          f"Ray row. Ray overhead per image: {(tr * a.workers - t1) / a.scenes * 1000:.0f} ms of worker time "
          f"({(tr * a.workers - t1) / t1:.0%} of the one-thread local cost).")


def pair_costs(a):
    import torchvision

    torch.set_num_threads(a.threads or torch.get_num_threads())
    print(f"# Seconds per (image, class) pair, 224 px, random weights, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}\n")
    print("| model | " + " | ".join(clrp.METHODS) + " | all |")
    print("|---|" + "---:|" * (len(clrp.METHODS) + 1))
    for name in a.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name).eval()
        x = torch.randn(1, 3, 224, 224)
        clrp.explain(model, x, 0, "gradient")  # trace once, outside the timing
        row = []
        for m in clrp.METHODS:
            start = time.perf_counter()
            for k in range(a.pairs):
                clrp.explain(model, x, k, m)
            row.append((time.perf_counter() - start) / a.pairs)
        print(f"| {name} | " + " | ".join(f"{t:.2f}" for t in row) + f" | {sum(row):.1f} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--methods", default="lrp,clrp2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pair-costs", action="store_true")
    p.add_argument("--models", nargs="+", default=["resnet50", "vgg16"])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    pair_costs(a) if a.pair_costs else throughput(a)


if __name__ == "__main__":
    main()
