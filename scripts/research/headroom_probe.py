#!/usr/bin/env python
"""Where does the hard preset's Pointing Game headroom go? A probe on variants of the world.

    python scripts/research/headroom_probe.py --n 100 --variants shipped,apart --threads 1

For each variant of :mod:`clrp.scenes.hard` (a :class:`~clrp.scenes.hard.HardWorld` passed to the
generator; the preset itself is unchanged), ``--n`` scenes from seed ``--seed`` on are generated, exported as
VOC and evaluated with the shipped ``bundled-hard`` model (trained on the shipped world): the
Pointing Game accuracy ("all", TorchRay's 15 px tolerance and mean of per-class accuracies) of
each method and of the centre baseline, and the model's mAP on those scenes (how far the variant
is from what the model knows). Prints a markdown table.

Variants (:data:`clrp.scenes.hard.VARIANTS`): ``shipped`` (the preset as it is), ``apart`` (no
object placed against another: ``OCCLUDE_P = 0``; objects still overlap when random placement
makes them), ``crowded`` (5 objects in every scene), ``partners`` (a partner class comes with its
partner whenever the scene has room), ``small`` (every object small), ``context`` (class-context
bands along the image edges; a model must be trained on it to learn them).

``--model VARIANT=WEIGHTS.pt`` evaluates that variant with a model trained on it
(``scripts/assets/train_hard_model.py --variant VARIANT``; its metadata ``WEIGHTS.json`` beside it)
instead of the shipped one, e.g. on a GPU machine::

    python scripts/assets/train_hard_model.py --variant partners --depth-out /tmp/v
    python scripts/research/headroom_probe.py --variants partners --model partners=/tmp/v/scene_vgg_d8_partners.pt --device cuda
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=30_000_000)
    ap.add_argument("--variants", default="shipped,apart")
    ap.add_argument("--methods", default="lrp,clrp2,gradient,guided_backprop,deconvnet,gradcam")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", action="append", default=[], metavar="VARIANT=WEIGHTS",
                    help="evaluate VARIANT with the model trained on it (repeatable; default: the shipped model)")
    a = ap.parse_args(argv)

    import torch

    from clrp import models
    from clrp.datasets import open_dataset
    from clrp.evaluation.runner import load_results, run_evaluation, summarize
    from clrp.scenes import export, hard

    torch.set_num_threads(a.threads)
    variants = [v for v in a.variants.split(",") if v]
    trained = dict(m.split("=", 1) for m in a.model)
    for v in [*variants, *trained]:
        if v not in hard.VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; known: {', '.join(hard.VARIANTS)}")
    shipped = models.load("bundled-hard")
    methods = [m for m in a.methods.split(",") if m]
    rows = []
    for name in variants:
        lm = variant_model(shipped, trained[name]) if name in trained else shipped
        lm.model.to(a.device)
        t0 = time.perf_counter()
        scene_list = list(hard.iter_scenes(a.n, a.seed, world=hard.VARIANTS[name]))
        with tempfile.TemporaryDirectory() as tmp:
            export.export_voc(scene_list, f"{tmp}/voc", "test", folder_name="CLRPHardScenes")
            ds = open_dataset(f"{tmp}/voc")
            run_evaluation(ds, lm, f"{tmp}/run", methods=methods, protocols=["pointing"], resume=False)
            table = summarize(f"{tmp}/run")["pointing"]
            where = argmax_places(load_results(f"{tmp}/run")["pointing"], scene_list)
        mAP = scene_map(lm, scene_list)
        rows.append((name, lm.name, mAP, table, where, time.perf_counter() - t0))
        print(f"{name}: done in {rows[-1][-1]:.0f} s", file=sys.stderr)
    print(f"`python scripts/research/headroom_probe.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    order = ["center"] + methods
    print("| variant | model | model mAP | pairs | " + " | ".join(order) + " | best - worst (non-centre) |")
    print("|---|---|---|---|" + "---|" * (len(order) + 1))
    for name, model_name, mAP, table, where, secs in rows:
        acc = {m: float(table.loc[m, "all"]) for m in order if m in table.index}
        spread = max(acc[m] for m in methods) - min(acc[m] for m in methods)
        print(f"| {name} | {model_name} | {mAP:.3f} | {int(table['n_all'].iloc[0])} | "
              + " | ".join(f"{100 * acc[m]:.1f}" for m in order) + f" | {100 * spread:.1f} |")
    print("\nVariants: " + "; ".join(f"{n} = {hard.VARIANTS[n].changes() or 'as shipped'}" for n, *_ in rows) + ".")
    for name, model_name, mAP, table, where, secs in rows:
        if where is None:
            continue
        print(f"\nWhere the arg-max lands on `{name}` (model {model_name}; % of pairs): on the target object, on the "
              "target class's context band, on another class's band, on another object, elsewhere.\n")
        print("| method | " + " | ".join(PLACES) + " |")
        print("|---|" + "---|" * len(PLACES))
        for m in order:
            if m in where.index:
                print(f"| {m} | " + " | ".join(f"{100 * where.loc[m, p]:.1f}" for p in PLACES) + " |")
    return 0


PLACES = ("target object", "own context band", "other context band", "other object", "elsewhere")


def argmax_places(rows, scene_list):
    """Share of each method's arg-max points per place (:data:`PLACES`), for scenes with context
    bands; None when the variant draws none. Objects are painted over bands: an object pixel counts
    as the object."""
    import numpy as np
    import pandas as pd

    from clrp.scenes import hard

    if not any(sc.contexts for sc in scene_list):
        return None
    by_name = {sc.name: sc for sc in scene_list}
    band_cache: dict = {}
    out = []
    for r in rows[rows["skipped"].isna()].itertuples():
        sc = by_name[r.image_id]
        h, w = sc.image.shape[:2]
        y, x = (min(max(int(round(v)), 0), n - 1) for v, n in ((r.point_y, h), (r.point_x, w)))
        if sc.name not in band_cache:
            band_cache[sc.name] = hard.context_masks(sc)
        bands = dict(band_cache[sc.name])
        own = bands.pop(r.class_name, np.zeros((h, w), bool))
        target = np.any([o.mask for o in sc.objects if o.class_name == r.class_name], axis=0)
        other = np.any([o.mask for o in sc.objects if o.class_name != r.class_name] or [np.zeros((h, w), bool)], axis=0)
        place = ("target object" if target[y, x] else "other object" if other[y, x] else
                 "own context band" if own[y, x] else
                 "other context band" if any(b[y, x] for b in bands.values()) else "elsewhere")
        out.append((r.method, place))
    df = pd.DataFrame(out, columns=["method", "place"])
    return pd.crosstab(df["method"], df["place"], normalize="index").reindex(columns=PLACES, fill_value=0.0)


def scene_map(lm, scene_list) -> float:
    """The model's mAP on these scenes, at its own input geometry."""
    import numpy as np

    from clrp.models.bundled_metrics import average_precision, predict_scenes

    logits = predict_scenes(lm.model, scene_list, preprocessing=lm.preprocessing)
    labels = np.stack([s.labels for s in scene_list])
    return float(np.nanmean([average_precision(logits[:, k], labels[:, k]) for k in range(labels.shape[1])]))


def variant_model(shipped, weights: str):
    """A model trained by ``train_hard_model.py --variant`` (weights + the metadata beside them), as a
    LoadedModel like the shipped one."""
    import dataclasses

    from clrp.models import bundled
    from clrp.models.preprocessing import Preprocessing

    model, meta = bundled.load_trained(weights)
    return dataclasses.replace(shipped, model=model, name=meta["name"], meta=meta, weights_path=Path(weights),
                               preprocessing=Preprocessing.from_dict(meta["preprocessing"]))


if __name__ == "__main__":
    sys.exit(main())
