#!/usr/bin/env python
"""Where does the hard preset's Pointing Game headroom go? A probe on variants of the world.

    python scripts/headroom_probe.py --n 100 --variants shipped,apart --threads 1

For each variant of :mod:`clrp.scenes_hard` (its module constants changed for this process only;
the preset itself is unchanged), ``--n`` scenes from seed ``--seed`` on are generated, exported as
VOC and evaluated with the shipped ``bundled-hard`` model (trained on the shipped world): the
Pointing Game accuracy ("all", TorchRay's 15 px tolerance and mean of per-class accuracies) of
each method and of the centre baseline, and the model's mAP on those scenes (how far the variant
is from what the model knows). Prints a markdown table.

Variants: ``shipped`` (the preset as it is), ``apart`` (no object placed against another:
``OCCLUDE_P = 0``; objects still overlap when random placement makes them), ``crowded`` (5
objects in every scene).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "shipped": {},
    "apart": {"OCCLUDE_P": 0.0},
    "crowded": {"OBJECT_COUNT_P": (0.0, 0.0, 0.0, 1.0)},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=30_000_000)
    ap.add_argument("--variants", default="shipped,apart")
    ap.add_argument("--methods", default="lrp,clrp2,gradient,guided_backprop,deconvnet,gradcam")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    import torch

    from clrp import models, scenes_hard
    from clrp.datasets import open_dataset
    from clrp.evaluation.runner import run_evaluation, summarize
    from clrp.models.bundled_metrics import evaluate_model

    torch.set_num_threads(a.threads)
    lm = models.load("bundled-hard")
    methods = [m for m in a.methods.split(",") if m]
    rows = []
    for name in a.variants.split(","):
        saved = {k: getattr(scenes_hard, k) for k in VARIANTS[name]}
        t0 = time.perf_counter()
        try:
            for k, v in VARIANTS[name].items():
                setattr(scenes_hard, k, v)
            scene_list = list(scenes_hard.iter_scenes(a.n, a.seed))
            with tempfile.TemporaryDirectory() as tmp:
                scenes_hard.export_voc(scene_list, f"{tmp}/voc", "test", folder_name="CLRPHardScenes")
                ds = open_dataset(f"{tmp}/voc")
                run_evaluation(ds, lm, f"{tmp}/run", methods=methods, protocols=["pointing"], resume=False)
                table = summarize(f"{tmp}/run")["pointing"]
            mAP = evaluate_model(lm.model, model_name="bundled-hard", scene_list=scene_list)["mAP"]
        finally:
            for k, v in saved.items():
                setattr(scenes_hard, k, v)
        rows.append((name, mAP, table, time.perf_counter() - t0))
        print(f"{name}: done in {rows[-1][3]:.0f} s", file=sys.stderr)
    print(f"`python scripts/headroom_probe.py --n {a.n} --seed {a.seed} --variants {a.variants} "
          f"--methods {a.methods} --threads {a.threads}`\n")
    order = ["center"] + methods
    print("| variant | model mAP | pairs | " + " | ".join(order) + " | best - worst (non-centre) |")
    print("|---|---|---|" + "---|" * (len(order) + 1))
    for name, mAP, table, secs in rows:
        acc = {m: float(table.loc[m, "all"]) for m in order if m in table.index}
        spread = max(acc[m] for m in methods) - min(acc[m] for m in methods)
        print(f"| {name} | {mAP:.3f} | {int(table['n_all'].iloc[0])} | "
              + " | ".join(f"{100 * acc[m]:.1f}" for m in order) + f" | {100 * spread:.1f} |")
    print("\nVariants: " + "; ".join(f"{n} = {VARIANTS[n] or 'as shipped'}" for n, *_ in rows) + ".")
    return 0


if __name__ == "__main__":
    sys.exit(main())
