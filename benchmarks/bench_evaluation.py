"""Evaluation speed on the CPU or a GPU: Pointing Game runs (images/s), the 11-method Pointing Game
extrapolated to VOC07 test, and region perturbation, batched vs naive.

    python benchmarks/bench_evaluation.py [--repeats 3] [--threads 2] [--skip-vgg] [--json out.json] [--device auto]
    python benchmarks/bench_evaluation.py --only-all-methods --all-methods-images 5000 --device cuda

1. Pointing Game through :func:`clrp.evaluation.runner.run_evaluation` (methods lrp and clrp2,
   each timed alone, centre baseline included), on bundled scenes (``scenes:N``, seeds 30,000,000+):
   - the bundled model at its input size (96 px); if its weights are not installed, the same
     architecture with random weights (said in the output);
   - torchvision VGG16 with random weights (``torchvision.models.vgg16()``, no download) at 224 px,
     wrapped in a ``LoadedModel`` (ImageNet normalisation, whole image resized to 224).
   Reported: images/s and (image, class) pairs/s, median over ``--repeats`` runs (fresh output
   folders; model load and scene generation excluded).
2. The Pointing Game with all 11 methods at once (integrated gradients and SmoothGrad with
   ``--steps`` steps/samples, 50 by default as in the VOC runs), one run each:
   - the bundled model on ``scenes:--all-methods-images`` (the issue's scenes:5000 on a GPU), wall
     time of the whole run;
   - torchvision VGG16 and ResNet-50 (random weights, 224 px) on ``--all-methods-vgg-images`` scenes:
     seconds per (image, class) pair, times 6,900 pairs = the VOC07 test set (4,952 images), as
     an extrapolated wall time (VOC images are resized to 224 like these).
   Also the peak memory of each run (benchmarks/memory.py).
3. Region perturbation (:func:`region_perturbation` with several ``batch_size`` vs
   :func:`region_perturbation_naive`): a small CNN at 224 px and the bundled architecture at 96 px,
   ``--pert-steps`` steps of 8 x 8 patches; variants run interleaved, median of ``--repeats``.

The machine is shared: numbers are medians of what was measured, with min-max ranges.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clrp  # noqa: E402
from clrp.scenes import easy, presets  # noqa: E402
from clrp.devices import describe, place, resolve_device  # noqa: E402
from clrp.datasets import open_dataset  # noqa: E402
from clrp.evaluation.perturbation import region_perturbation, region_perturbation_naive  # noqa: E402
from clrp.evaluation.runner import run_evaluation  # noqa: E402
from clrp.models import LoadedModel, Preprocessing, build_architecture  # noqa: E402
from memory import memory_kind, peak_memory  # noqa: E402

#: VOC07 test: 4,952 images, about 6,900 (image, class) pairs (difficult objects excluded).
VOC07_TEST_PAIRS = 6900


def bundled_or_random():
    from clrp import models

    try:
        return models.load("bundled"), "bundled (shipped weights)"
    except models.ModelLoadError:
        torch.manual_seed(0)
        net = build_architecture("scene_vgg", len(easy.CLASS_NAMES)).eval()
        from clrp.models.bundled import bundled_preprocessing

        return (LoadedModel(net, list(easy.CLASS_NAMES), bundled_preprocessing(), "scene_vgg-random"),
                "bundled architecture, RANDOM weights (shipped weights not installed)")


def vgg16_random(arch="vgg16"):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(arch).eval()   # random weights; nothing downloaded
    # the scenes' classes as the first 10 outputs' names (the weights are random anyway)
    names = list(easy.CLASS_NAMES) + [f"class_{i}" for i in range(10, 1000)]
    pp = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(224, 224), resize=None)
    return LoadedModel(net, names, pp, f"{arch}-random", architecture=arch)


def time_all_methods(lm, root, n_images, steps, device):
    """One Pointing Game run with every method: wall seconds, pairs, peak memory."""
    import pandas as pd

    methods = tuple(clrp.METHODS)
    opts = {"integrated_gradients": {"steps": steps}, "smoothgrad": {"samples": steps}}
    out = tempfile.mkdtemp(prefix="clrp-bench-")
    try:
        ds = open_dataset(root, "voc", split="test")
        t0 = time.perf_counter()
        _, peak = peak_memory(lambda: run_evaluation(ds, lm, out, methods=methods, protocols=("pointing",),
                                                     tolerance="scaled", limit=n_images, batch_size=8,
                                                     method_options=opts, device=device), device)
        dt = time.perf_counter() - t0
        rows = pd.concat([pd.read_parquet(os.path.join(out, "pointing", f))
                          for f in os.listdir(os.path.join(out, "pointing"))])
        pairs = int((rows["method"] == methods[0]).sum())
        failed = sorted(set(methods) - set(rows["method"]))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": dt, "images": n_images, "pairs": pairs, "methods": list(methods), "steps": steps,
            "peak_bytes": int(peak), "methods_without_rows": failed}


def time_pointing(lm, root, method, n_images, repeats):
    rates, pair_rates = [], []
    for _ in range(repeats):
        out = tempfile.mkdtemp(prefix="clrp-bench-")
        try:
            ds = open_dataset(root, "voc", split="test")
            t0 = time.perf_counter()
            run_evaluation(ds, lm, out, methods=(method,), protocols=("pointing",), tolerance="scaled",
                           limit=n_images, batch_size=8, device=lm_device(lm))
            dt = time.perf_counter() - t0
            import pandas as pd

            rows = pd.concat([pd.read_parquet(os.path.join(out, "pointing", f))
                              for f in os.listdir(os.path.join(out, "pointing"))])
            pairs = int((rows["method"] == method).sum())
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rates.append(n_images / dt)
        pair_rates.append(pairs / dt)
    return {"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "pairs_per_s": statistics.median(pair_rates), "runs": rates}


def lm_device(lm):
    from clrp.devices import device_of

    return device_of(lm)


def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()


def time_perturbation(net, size, steps, batches, repeats):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, size, size, generator=g)
    rel = torch.randn(size, size, generator=g)
    kw = dict(order="morf", patch=8, steps=steps, baseline="mean")
    variants = {f"batched {b}": (lambda b=b: region_perturbation(net, x, rel, 1, batch_size=b, **kw)) for b in batches}
    variants["default"] = lambda: region_perturbation(net, x, rel, 1, **kw)   # default_batch_size
    variants["naive"] = lambda: region_perturbation_naive(net, x, rel, 1, **kw)
    for f in variants.values():      # warm-up
        f()
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, f in variants.items():   # interleaved, so drifting load hits every variant alike
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    ref = variants["naive"]().scores
    diff = max(float(abs(variants[k]().scores - ref).max()) for k in variants)
    naive = statistics.median(times["naive"])
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                "speedup_vs_naive": naive / statistics.median(v)} for k, v in times.items()}, diff


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--images", type=int, default=24, help="scenes per Pointing Game run (bundled model)")
    ap.add_argument("--vgg-images", type=int, default=4, help="scenes per Pointing Game run (VGG16)")
    ap.add_argument("--pert-steps", type=int, default=100)
    ap.add_argument("--skip-vgg", action="store_true")
    ap.add_argument("--skip-pointing", action="store_true")
    ap.add_argument("--skip-perturbation", action="store_true")
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (clrp.devices)")
    ap.add_argument("--all-methods-images", type=int, default=24,
                    help="scenes for the 11-method Pointing Game with the bundled model (0: skip)")
    ap.add_argument("--all-methods-vgg-images", type=int, default=4,
                    help="scenes for the 11-method Pointing Game with VGG16 and ResNet-50 at 224 px (0: skip)")
    ap.add_argument("--steps", type=int, default=50, help="integrated gradients steps and SmoothGrad samples")
    ap.add_argument("--only-all-methods", action="store_true", help="only the 11-method Pointing Game")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    if a.only_all_methods:
        a.skip_pointing = a.skip_perturbation = True
    out = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "repeats": a.repeats, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "device": describe(device), "memory": memory_kind(device)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {describe(device)}; "
          f"medians of {a.repeats} runs [min-max]")
    tmp = tempfile.mkdtemp(prefix="clrp-bench-scenes-")
    try:
        if a.all_methods_images or a.all_methods_vgg_images:
            n = max(a.all_methods_images, a.all_methods_vgg_images)
            root = presets.voc_cache(n, presets.EVALUATION_SEED, tmp)
            out["all_methods"] = {}
            runs = []
            if a.all_methods_images:
                lm, what = bundled_or_random()
                runs.append((lm, what, a.all_methods_images))
            if a.all_methods_vgg_images:
                runs += [(vgg16_random(arch), f"torchvision {arch}, random weights, 224 px", a.all_methods_vgg_images)
                         for arch in ("vgg16", "resnet50")]
            for m, desc, k in runs:
                place(m, device)
                time_all_methods(m, root, 1, a.steps, device)  # warm-up: traces and caches, not timed
                r = time_all_methods(m, root, k, a.steps, device)
                per_pair = r["seconds"] / max(1, r["pairs"])
                r.update(model=desc, seconds_per_pair=per_pair, voc07_test_seconds=per_pair * VOC07_TEST_PAIRS,
                         scenes_5000_seconds=r["seconds"] / k * 5000)
                out["all_methods"][m.name] = r
                # the bundled model's own world is scenes at 96 px; VOC-sized work is the 224 px models
                extra = (f"scenes:5000 extrapolated: {r['scenes_5000_seconds'] / 60:.1f} min" if m is runs[0][0]
                         and a.all_methods_images else f"VOC07 test ({VOC07_TEST_PAIRS} pairs) extrapolated: "
                         f"{r['voc07_test_seconds'] / 60:.1f} min")
                print(f"Pointing Game, 11 methods ({a.steps} steps for IG/SmoothGrad), {desc}: {k} images, "
                      f"{r['pairs']} pairs in {r['seconds']:.1f} s ({k / r['seconds']:.2f} images/s, "
                      f"{per_pair:.3f} s per pair), peak {r['peak_bytes'] / 2 ** 20:.0f} MiB; {extra}"
                      + (f"; no rows for {r['methods_without_rows']}" if r["methods_without_rows"] else ""))
                sys.stdout.flush()
        if not a.skip_pointing:
            root = presets.voc_cache(max(a.images, a.vgg_images), presets.EVALUATION_SEED, tmp)
            lm, what = bundled_or_random()
            out["pointing"] = {}
            models = [(lm, what, a.images)]
            if not a.skip_vgg:
                models.append((vgg16_random(), "torchvision VGG16, random weights, 224 px", a.vgg_images))
            for m, desc, n in models:
                place(m, device)
                for method in ("lrp", "clrp2"):
                    r = time_pointing(m, root, method, n, a.repeats)
                    out["pointing"][f"{m.name}/{method}"] = dict(r, model=desc, images=n)
                    print(f"Pointing Game {desc}, {method}: {r['images_per_s']:.2f} images/s "
                          f"[{r['min']:.2f}-{r['max']:.2f}], {r['pairs_per_s']:.2f} (image, class) pairs/s, "
                          f"{n} images per run")
        if not a.skip_perturbation:
            out["perturbation"] = {}
            lm, what = bundled_or_random()
            for name, net, size in (("small CNN 224 px", small_cnn(), 224), (f"{what} 96 px", lm.model, 96)):
                res, diff = time_perturbation(net, size, a.pert_steps, (1, 8, 32, 101), a.repeats)
                out["perturbation"][name] = dict(res, max_abs_difference=diff)
                print(f"region perturbation, {name}, {a.pert_steps} steps of 8x8, one MoRF curve:")
                for k, v in res.items():
                    print(f"  {k:>12}: {v['median_s']:.3f} s [{v['min_s']:.3f}-{v['max_s']:.3f}], "
                          f"x{v['speedup_vs_naive']:.2f} vs naive")
                print(f"  max |batched - naive| = {diff:.1e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
