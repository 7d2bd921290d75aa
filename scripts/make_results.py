"""Evaluate every explanation method on held-out bundled scenes and write ``docs/RESULTS.md``.

    python scripts/make_results.py                       # bundled model, 300 scenes
    python scripts/make_results.py --n 40 --n-perturbation 8 --n-ablation 10 \
        --architecture scene_vgg --weights rand.pt --class-names classes.txt --doc /tmp/R.md   # quick test

Scenes: seeds ``--seed`` .. ``--seed + n - 1`` (default 30,000,000+: disjoint from the bundled
model's training seeds 0..9,999,999, its held-out/monitor sets 10,000,000+ and the metrics seeds
20,000,000+), exported as VOC into ``--work`` and evaluated with

1. the runner (:func:`clrp.evaluation.runner.run_evaluation`): Pointing Game (all / difficult,
   tolerance ``scaled`` = 15 px per 224 px of the shorter side, i.e. 8.57 px on the 128 px scenes,
   plus the centre baseline) and class-discriminativeness for every method in ``clrp.METHODS``
   on all ``n`` scenes;
2. region perturbation (AOPC MoRF / LeRF / random) for every method plus a centre map on the
   first ``--n-perturbation`` scenes, all curves of one (image, class) evaluated together in large
   batches (the random order does not depend on the method, so it is computed once per pair);
3. the runner's hidden-layer feature ablation for the LRP-family methods on the first
   ``--n-ablation`` scenes;
4. diagnostics: the paper's effect on two-class scenes (Pearson r of the maps of the two
   classes), where each method's arg-max lands (own object / other object / background), per-class
   Pointing Game, and a figure of a few scenes (``docs/results/*.png``).

Every stage is resumable (the runner writes per batch, the perturbation stage per image): run
the same command again after an interruption.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import clrp  # noqa: E402
from clrp import scenes  # noqa: E402
from clrp.datasets import open_dataset  # noqa: E402
from clrp.evaluation import perturbation as P  # noqa: E402
from clrp.evaluation import runner as R  # noqa: E402

LRP_FAMILY = ("lrp", "clrp1", "clrp2", "sglrp")
#: cheaper settings for the two sampling methods (defaults 50 steps / 25 samples), stated in the doc
METHOD_OPTIONS: dict = {}   # every method with its default options


# ---------------------------------------------------------------------------------------------
def md_table(df, floatfmt="{:.3f}", index=True) -> str:
    cols = list(df.columns)
    head = ([str(df.index.name or "")] if index else []) + [str(c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        cells = [str(idx)] if index else []
        for c in cols:
            v = row[c]
            if isinstance(v, (float, np.floating)) and str(c).startswith("n") and not math.isnan(v) and v == int(v):
                cells.append(str(int(v)))
            elif isinstance(v, (float, np.floating)):
                cells.append("" if math.isnan(v) else floatfmt.format(v))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_model(a):
    from clrp import models

    if a.architecture:
        return models.load("finetuned", architecture=a.architecture, weights=a.weights,
                           class_names=a.class_names)
    return models.load(a.model)


def scene_of(image_id: str):
    return scenes.generate_scene(int(str(image_id).split("_")[-1]))


# ---------------------------------------------------------------------------------------------
def center_map(h, w):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return -torch.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2)


@torch.no_grad()
def curves_for_pair(net, x, maps: dict, target: int, *, patch, steps, pps, baseline, seed, batch):
    """All perturbation curves of one (image, class): MoRF and LeRF per map, random once.
    Returns rows like ``perturbation_rows`` (``method`` = the map's name; random: ``random``)."""
    _, h, w = x.shape
    n_regions = math.ceil(h / patch) * math.ceil(w / patch)
    k = min(steps, math.ceil(n_regions / pps))
    base = P.make_baseline(x, baseline, patch=patch, seed=seed)
    counts = torch.clamp(torch.arange(k + 1) * pps, max=n_regions)
    specs = []   # (method, order, order_idx): ties broken in a seeded random order, and in raster order
    for m, r in maps.items():
        for o in ("morf", "lerf"):
            specs.append((m, o, P.patch_order(r, h, w, patch, o, seed)))
            specs.append((m, f"{o}_raster", P.patch_order(r, h, w, patch, o, seed, ties="raster")))
    first = next(iter(maps.values()))
    specs.append(("random", "random", P.patch_order(first, h, w, patch, "random", seed)))
    ranks = torch.stack([P._rank_map(oi, h, w, patch, x.device) for _, _, oi in specs])   # [S, H, W]
    # every (curve, step) image, built chunk by chunk
    total = len(specs) * (k + 1)
    scores = torch.empty(total, dtype=torch.float64)
    for a in range(0, total, batch):
        idx = torch.arange(a, min(a + batch, total))
        s_i, k_i = idx // (k + 1), idx % (k + 1)
        mask = ranks[s_i] < counts[k_i][:, None, None]
        xb = torch.where(mask[:, None], base[None], x[None])
        scores[a:a + len(idx)] = net(xb)[:, target].double()
    scores = scores.view(len(specs), k + 1).numpy()
    rows = []
    shares = {m: P.tie_share(r, h, w, patch) for m, r in maps.items()}
    for (m, o, oi), s in zip(specs, scores):
        rows.append({"method": m, "order": o, "aopc": P.aopc(s), "score_0": float(s[0]), "tie_share": shares.get(m),
                     "score_K": float(s[-1]), "steps": k, "scores": s.tolist(), "patch": patch,
                     "patches_per_step": pps, "baseline": baseline,
                     "fraction_K": float(P._fractions(oi, h, w, patch, k, pps)[-1])})
    return rows


def run_perturbation(ds_root, lm, work, n, a):
    import pandas as pd

    out = os.path.join(work, "perturbation")
    os.makedirs(out, exist_ok=True)
    ds = open_dataset(ds_root, "voc", split="test")
    mapping = ds.map_classes(lm.class_names)
    pp = R._eval_preprocessing(lm.preprocessing, "full")
    net = lm.model
    methods = list(clrp.METHODS)
    count = 0
    run_perturbation.new = 0
    for s in ds.samples():
        if count >= n:
            break
        count += 1
        path = os.path.join(out, f"{s.image_id}.parquet")
        if os.path.exists(path):
            continue
        img = s.load_image()
        x = pp.to_tensor(img)
        classes = [c for c in R._sample_classes(s) if c in mapping]
        rows = []
        for c in classes:
            t = mapping[c]
            maps = {}
            for m in methods:
                opts = dict(METHOD_OPTIONS.get(m, {}), box=pp.box)
                maps[m] = clrp.explain(net, x, [t], m, rules="paper", **opts)[0].sum(0).detach().double()
            maps["center"] = center_map(*x.shape[-2:])
            for r in curves_for_pair(net, x[0], maps, t, patch=a.patch, steps=a.steps, pps=a.pps,
                                     baseline="mean", seed=0, batch=a.perturbation_batch):
                r.update(image_id=s.image_id, class_name=c, target=t)
                rows.append(r)
        run_perturbation.new += 1
        pd.DataFrame(rows).to_parquet(path + ".tmp", index=False)
        os.replace(path + ".tmp", path)
        print(f"  perturbation {count}/{n}", file=sys.stderr, flush=True)
    files = sorted(f for f in os.listdir(out) if f.endswith(".parquet"))[:n]
    return pd.concat([pd.read_parquet(os.path.join(out, f)) for f in files], ignore_index=True)


# ---------------------------------------------------------------------------------------------
def argmax_locations(pt):
    """Where each method's arg-max lands: on the target object, on another object, on background."""
    import pandas as pd

    cache = {}
    recs = []
    for r in pt.itertuples():
        if r.method == "center" or (isinstance(r.skipped, str) and r.skipped):
            continue
        if r.image_id not in cache:
            cache[r.image_id] = scene_of(r.image_id)
        sc = cache[r.image_id]
        y, x = int(round(r.point_y)), int(round(r.point_x))
        where = "background"
        for o in sc.objects:
            if o.mask[y, x]:
                where = "target object" if o.class_name == r.class_name else "other object"
                break
        recs.append({"method": r.method, "where": where, "n_classes": len(sc.objects)})
    df = pd.DataFrame(recs)
    tab = df.groupby("method")["where"].value_counts(normalize=True).unstack().fillna(0.0)
    multi = df[df["n_classes"] >= 2].groupby("method")["where"].value_counts(normalize=True).unstack().fillna(0.0)
    return tab, multi


def depth_profile(lm, image_ids, methods=("lrp", "clrp1", "clrp2")):
    """Mean Pearson r between the relevance of the two present classes at each layer, from the
    output downwards (``clrp.layer_relevance(..., spatial=True)``: the whole relevance tensor at
    that layer, flattened; for contrastive methods the signed difference target - dual), and of the
    final channel-summed input maps. Shows where the classes' relevances become alike."""
    import pandas as pd
    from PIL import Image

    from clrp import engine
    from clrp.methods import layer_relevance

    pp = R._eval_preprocessing(lm.preprocessing, "full")
    plan = engine.plan_for(lm.model, torch.zeros(1, 3, *pp.input_size))
    labels = {"conv2d": "conv", "linear": "linear", "relu": "relu", "max_pool2d": "maxpool",
              "avg_pool2d": "avgpool", "adaptive_avg_pool2d": "adaptive_avgpool"}
    nodes = [n for n in plan.graph.nodes if n.op_name in labels and plan.graph.carries[n.index]]
    layers = [n.name for n in nodes][::-1]
    kinds = {n.name: labels[n.op_name] for n in nodes}
    rows = []
    for iid in image_ids:
        sc = scene_of(iid)
        if len(sc.objects) != 2:
            continue
        x = pp.to_tensor(Image.fromarray(sc.image)).repeat(2, 1, 1, 1)
        t = [lm.class_names.index(o.class_name) for o in sc.objects]
        for m in methods:
            for l in layers[1:]:   # the output layer itself holds only the seed
                r = layer_relevance(lm.model, x, t, l, method=m, spatial=True, box=pp.box).reshape(2, -1).double()
                rows.append({"method": m, "layer": f"{l} ({kinds[l]})", "r": float(np.corrcoef(r.numpy())[0, 1])})
            r = clrp.explain(lm.model, x, t, m, box=pp.box).sum(1).reshape(2, -1).double()
            rows.append({"method": m, "layer": "input map (channel sum)", "r": float(np.corrcoef(r.numpy())[0, 1])})
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["layer"]))
    return df.pivot_table(index="layer", columns="method", values="r", aggfunc="mean").loc[order]


def figure(lm, items, path, methods=("lrp", "clrp1", "clrp2", "gradcam")):
    """``items``: (image_id, class names or None for every object) -> one row per class."""
    from clrp import viz

    pp = R._eval_preprocessing(lm.preprocessing, "full")
    tiles, titles = [], []
    from PIL import Image

    for iid, classes in items:
        sc = scene_of(iid)
        x = pp.to_tensor(Image.fromarray(sc.image))
        disp = pp.display_array(Image.fromarray(sc.image))
        for name in (classes or [o.class_name for o in sc.objects]):
            t = lm.class_names.index(name)
            tiles.append(disp)
            titles.append(f"{iid[-3:]} {name}")
            for m in methods:
                opts = {"box": pp.box}
                r = viz.channel_sum(clrp.explain(lm.model, x, [t], m, **opts).detach())
                cmap = viz.default_colormap([r])
                lim = viz.color_limits([r], cmap=cmap)[0]
                tiles.append(viz.colorize(r, cmap, lim.vmin, lim.vmax))
                titles.append(f"{m}")
    with open(path, "wb") as f:
        f.write(viz.render_grid_png(tiles, titles, columns=1 + len(methods), scale=2))


# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--architecture")
    ap.add_argument("--weights")
    ap.add_argument("--class-names")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--n-perturbation", type=int, default=60)
    ap.add_argument("--n-ablation", type=int, default=100)
    ap.add_argument("--seed", type=int, default=scenes.EVALUATION_SEED)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--pps", type=int, default=4, help="regions per perturbation step")
    ap.add_argument("--perturbation-batch", type=int, default=8)
    ap.add_argument("--work", default=os.path.join(ROOT, "artifacts", "results"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "RESULTS.md"))
    ap.add_argument("--figures", default=None, help="folder for figures (default: <doc folder>/results)")
    ap.add_argument("--findings", default=os.path.join(ROOT, "docs", "results", "findings.md"),
                    help="hand-written findings (markdown) inserted at the end")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core machine a second thread that waits for "
                         "a busy core makes every op several times slower; 0 = torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    import pandas as pd

    t_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    lm = load_model(a)
    fp = R.model_fingerprint(lm.model)
    work = os.path.join(a.work, f"{lm.architecture}-{fp[:10]}")   # keyed by the weights, not the name
    os.makedirs(work, exist_ok=True)
    fig_dir = a.figures or os.path.join(os.path.dirname(os.path.abspath(a.doc)), "results")
    os.makedirs(fig_dir, exist_ok=True)
    timings_path = os.path.join(work, "timings.json")
    stored = json.load(open(timings_path)) if os.path.isfile(timings_path) else {}
    timings = {}

    def timed(key, seconds, did_work):
        """Keep the timing of the run that did a stage's work (a cached stage takes ~0 s)."""
        timings[key] = seconds if did_work or key not in stored else stored[key]
        stored[key] = timings[key]
        with open(timings_path, "w") as f:
            json.dump(stored, f, indent=1)

    t0 = time.perf_counter()
    fresh = not os.path.isdir(os.path.join(work, f"scenes-{a.n}-{a.seed}"))
    root = scenes.voc_cache(a.n, a.seed, work)
    timed("scene generation + VOC export", time.perf_counter() - t0, fresh)

    methods = tuple(clrp.METHODS)
    t0 = time.perf_counter()
    ds = open_dataset(root, "voc", split="test")
    rr = R.run_evaluation(ds, lm, os.path.join(work, "pointing"), methods=methods,
                     protocols=("pointing", "discriminativeness"), rules="paper", tolerance="scaled",
                     method_options=METHOD_OPTIONS, batch_size=16, progress=True)
    timed(f"Pointing Game + discriminativeness ({a.n} scenes, {len(methods)} methods)", time.perf_counter() - t0,
          rr.images_new > 0)

    t0 = time.perf_counter()
    ds = open_dataset(root, "voc", split="test")
    rr = R.run_evaluation(ds, lm, os.path.join(work, "ablation"), methods=LRP_FAMILY, protocols=("ablation",),
                     rules="paper", limit=a.n_ablation, batch_size=8, progress=True)
    timed(f"feature ablation ({a.n_ablation} scenes, {len(LRP_FAMILY)} methods)", time.perf_counter() - t0,
          rr.images_new > 0)

    t0 = time.perf_counter()
    pert = run_perturbation(root, lm, work, a.n_perturbation, a)
    timed(f"region perturbation ({a.n_perturbation} scenes, {len(methods)} methods + centre)", time.perf_counter() - t0,
          run_perturbation.new > 0)

    # ---------------------------------------------------------------------------------------
    t_diag = time.perf_counter()
    res = R.load_results(os.path.join(work, "pointing"))
    pt, disc = res["pointing"], res["discriminativeness"]
    psum = R.summarize({"pointing": pt})["pointing"]
    dsum = R.summarize({"discriminativeness": disc})["discriminativeness"]
    abl = R.load_results(os.path.join(work, "ablation"))["ablation"]
    asum = R.summarize({"ablation": abl})["ablation"]
    pert_table, _ = P.aopc_summary(pert.to_dict("records"))
    # random order: one curve per pair, shared by every method
    rnd = pert[pert["order"] == "random"]
    pt_ok = pt[pt["skipped"].isna()]
    n_classes = pt_ok[pt_ok["method"] == "center"].groupby("image_id")["class_name"].nunique()
    two = set(n_classes[n_classes == 2].index)
    d2 = disc[disc["image_id"].isin(two)]
    effect = d2.groupby("method").agg(pearson_mean=("pearson", "mean"), pearson_median=("pearson", "median"),
                                      iou_top_mean=("iou_top", "mean"), n_pairs=("pearson", "size"))
    effect["share_r_above_0.9"] = d2.assign(hi=d2["pearson"] > 0.9).groupby("method")["hi"].mean()
    loc_all, loc_multi = argmax_locations(pt)
    # two-class scenes: do the two classes' arg-max points coincide, and the per-method Pointing Game there
    same = []
    for (iid, m), g in pt_ok[pt_ok["image_id"].isin(two)].groupby(["image_id", "method"]):
        if len(g) == 2 and m != "center":
            p = g[["point_y", "point_x"]].to_numpy(float)
            same.append({"method": m, "same_point": float(np.hypot(*(p[0] - p[1])) <= g["tolerance"].iloc[0]),
                         "hits": float(g["hit"].mean())})
    same = pd.DataFrame(same).groupby("method").mean() if same else pd.DataFrame()
    pt_two = R.summarize({"pointing": pt_ok[pt_ok["image_id"].isin(two)]})["pointing"][["all", "n_all"]]
    effect = effect.join(same.rename(columns={"same_point": "argmax_same_place", "hits": "pointing_hit_rate"}))
    per_class = psum[[c for c in psum.columns if str(c).startswith("class:")]].rename(columns=lambda c: c[6:]).T

    # figure of a few two-class scenes
    # a few two-class scenes, then scenes where LRP misses and CLRP2 hits (and the reverse)
    piv = pt_ok[pt_ok["method"].isin(["lrp", "clrp2"])].pivot_table(index=["image_id", "class_name"],
                                                                     columns="method", values="hit", aggfunc="first")
    lrp_only = [(i, c) for (i, c), r in piv.iterrows() if not r.get("lrp", True) and r.get("clrp2", False)]
    clrp_only = [(i, c) for (i, c), r in piv.iterrows() if r.get("lrp", False) and not r.get("clrp2", True)]
    lrp_only_miss = [f"{i} ({c})" for i, c in lrp_only]
    clrp_only_miss = [f"{i} ({c})" for i, c in clrp_only]
    fig_items = [(i, None) for i in sorted(two)[:2]] + [(i, [c]) for i, c in lrp_only[:3]] + \
        [(i, [c]) for i, c in clrp_only[:1]]
    fig_ids = [i for i, _ in fig_items]
    fig_path = os.path.join(fig_dir, "maps_two_class.png")
    if fig_items:
        figure(lm, fig_items, fig_path)
    depth = depth_profile(lm, sorted(two))
    runtime = time.perf_counter() - t_start
    timed("tables, diagnostics and figure", time.perf_counter() - t_diag, True)
    compute = sum(v for k, v in timings.items())
    versions = R.versions()
    heldout = lm.meta.get("heldout_metrics") if isinstance(getattr(lm, "meta", None), dict) else None

    # ---------------------------------------------------------------------------------------
    L = []
    L.append("# Results: LRP, CLRP and baselines on held-out bundled scenes\n")
    L.append(f"Generated by `python {' '.join(sys.argv)}` on {started:%Y-%m-%d %H:%M} UTC; "
             f"computing time {compute / 60:.1f} min in all (this invocation {runtime / 60:.1f} min; stages "
             "done by an earlier invocation of the same command are reused and listed with their measured time) "
             f"on this machine "
             f"({os.cpu_count()} CPU cores shared with other jobs, torch threads {torch.get_num_threads()}, no GPU).\n")
    L.append("## Setting\n")
    L.append(f"- Model: `{lm.name}` ({lm.architecture}; {lm.description}); weights SHA-1 fingerprint "
             f"`{fp}`; input {lm.preprocessing.input_size} (whole 128 x 128 scene resized), "
             f"mean/std {lm.preprocessing.mean}/{lm.preprocessing.std}.")
    if heldout:
        L.append(f"- Model quality recorded in its metadata: held-out mAP {heldout.get('mAP', float('nan')):.4f} on "
                 f"{heldout.get('n_scenes')} scenes (seeds {heldout.get('scene_seeds')}); lowest per-class AP "
                 f"{min((heldout.get('per_class_AP') or {'-': float('nan')}).values()):.4f}.")
    L.append(f"- Data: {a.n} procedural scenes, seeds {a.seed}..{a.seed + a.n - 1} (never used in training: "
             "training used seeds 0..9,999,999), exported as VOC with object masks; "
             f"{len(two)} of them hold exactly two classes.")
    L.append("- Rules: preset `paper` (zB on the first conv with the per-channel box of the model's "
             "normalisation, z+ on every other conv and dense layer, biases ignored); LRP seed = signed "
             "target logit; CLRP1 dual = uniform (paper text), CLRP2 = negated target weights; "
             "contrast = clamp (max(0, R_target - R_dual)).")
    L.append(f"- Method options: defaults (`python -m clrp methods` lists them)"
             + (f", except `{json.dumps(METHOD_OPTIONS)}`." if METHOD_OPTIONS else "."))
    L.append(f"- Versions: {json.dumps({k: versions[k] for k in ('clrp', 'torch', 'torchvision', 'python', 'numpy') if k in versions})}.")
    L.append("\nRuntime per stage:\n")
    for k, v in timings.items():
        L.append(f"- {k}: {v / 60:.1f} min")

    L.append("\n## Pointing Game\n")
    tol = sorted(pt_ok["tolerance"].unique())
    L.append(f"Tolerance `scaled`: 15 px per 224 px of the shorter side = {tol[0]:.2f} px on the 128 px "
             "scenes. Ground truth = object masks. Score = mean of per-class accuracies; `difficult` = class "
             "region < 1/4 of the image and another class present. `center` = always the image centre.\n")
    cols = ["all", "difficult", "n_all", "n_difficult", "n_constant_maps"]
    L.append(md_table(psum[cols].sort_values("all", ascending=False)))
    L.append("\nPer class (all):\n")
    L.append(md_table(per_class))

    L.append("\n## Class-discriminativeness (images with >= 2 classes)\n")
    L.append("Pearson r between the channel-summed maps of two present classes (lower = more "
             "class-specific), IoU of their top-10 % pixels.\n")
    L.append(md_table(dsum.sort_values("pearson_mean")))
    L.append("\n### The paper's effect: two-class scenes\n")
    L.append(f"{len(two)} scenes with exactly two classes; Pearson r between the maps of the two classes:\n")
    L.append(md_table(effect.sort_values("pearson_mean")))
    L.append("\n`argmax_same_place` = share of these scenes where the arg-max points of the two classes lie within "
             "the tolerance of each other (the map points at the same place whichever class is asked for); "
             "`pointing_hit_rate` = share of the (image, class) pairs of these scenes that are Pointing Game hits. "
             "Pointing Game (mean of per-class accuracies) on the two-class scenes only:\n")
    L.append(md_table(pt_two.sort_values("all", ascending=False)))

    L.append("\nWhere the two classes' relevances become alike: mean Pearson r between the relevance of the two "
             "classes at each layer on the same two-class scenes, from the output downwards (the whole relevance "
             "tensor at the layer's output, flattened; for CLRP the signed difference target - dual, before the "
             "final clamp, which is applied only to the input map):\n")
    L.append(md_table(depth))
    L.append("\n## Region perturbation (AOPC)\n")
    L.append(f"First {a.n_perturbation} scenes, every present class; patches {a.patch} x {a.patch} px of the "
             f"{lm.preprocessing.input_size[0]} px model input, {a.pps} patches per step, {int(pert['steps'].iloc[0])} steps "
             f"(= {pert['fraction_K'].iloc[0]:.0%} of the image), baseline = per-channel image mean, score = target "
             "logit. AOPC = mean over steps of (score_0 - score_k): MoRF high = good, LeRF low = good. "
             f"The random order (seed 0) does not depend on the method: mean AOPC "
             f"{rnd['aopc'].mean():.3f} (n = {len(rnd)}). `center` perturbs from the centre outwards (MoRF). "
             "Regions with equal scores are taken in a seeded random order (clrp >= 0.2); `*_raster` columns "
             "take them in raster order, as clrp 0.1 did; `tie_share` = mean fraction of regions whose score "
             "equals another region's.\n")
    pert_table = pert_table.drop(index="random", errors="ignore")
    t = pert_table[["aopc_morf", "aopc_lerf", "aopc_morf_raster", "aopc_lerf_raster", "tie_share", "n"]]
    t = t.assign(morf_minus_lerf=t["aopc_morf"] - t["aopc_lerf"]).sort_values("aopc_morf", ascending=False)
    t = t.rename(columns={"n": "n_images"})
    t["n_pairs"] = pert[pert["order"] == "morf"].groupby("method").size()
    L.append(md_table(t))
    tied = t[t["tie_share"] > 0.2]
    if len(tied):
        L.append("\nWhat the tie order changed: " + "; ".join(
            f"{m} (ties {r.tie_share:.0%} of regions) MoRF {r.aopc_morf_raster:.2f} in raster order, "
            f"{r.aopc_morf:.2f} in random order" for m, r in tied.iterrows())
            + f"; LRP, with {t.loc['lrp', 'tie_share']:.0%} ties, {t.loc['lrp', 'aopc_morf']:.2f}. Raster order "
            "removes the tied regions of the top rows first, whatever the image shows.\n")

    L.append("\n## Hidden-layer feature ablation\n")
    L.append(f"First {a.n_ablation} scenes; layer `{R.default_ablation_layer(lm.model, lm.preprocessing.input_size)}` (last ReLU before the "
             "classifier); channels ranked by `clrp.layer_relevance` with each method, top-k zeroed; "
             "target_drop = drop of the target logit, others_drop = drop of the mean of the other logits, "
             "gap = target_drop - others_drop; `random` = 5 seeded random choices of k channels.\n")
    L.append(md_table(asum.reset_index(), index=False))

    L.append("\n## Where the arg-max lands\n")
    L.append("Share of (image, class) pairs whose arg-max pixel (at 128 px) lies on the target object's mask, "
             "on another object's mask, or on the background (all scenes / scenes with >= 2 classes):\n")
    L.append(md_table(loc_all))
    L.append("\nScenes with >= 2 classes:\n")
    L.append(md_table(loc_multi))
    if fig_ids:
        rel = os.path.relpath(fig_path, os.path.dirname(os.path.abspath(a.doc)))
        L.append(f"\n![maps]({rel})\n")
        L.append("Per row: the input and the maps of one present class (lrp, clrp1, clrp2, gradcam; each map on "
                 "its own colour scale): both classes of two two-class scenes, then pairs where LRP misses and CLRP2 "
                 "hits, and where CLRP2 misses and LRP hits. "
                 f"Scenes where LRP misses and CLRP2 hits: {', '.join(lrp_only_miss) or 'none'}; "
                 f"where CLRP2 misses and LRP hits: {', '.join(clrp_only_miss) or 'none'}.\n")
    L.append("\n## Findings\n")
    if a.findings and os.path.isfile(a.findings):
        with open(a.findings, encoding="utf-8") as f:
            L.append(f.read())
    else:
        L.append("(no findings file: write them to docs/results/findings.md and run again; every stage is cached)\n")
    with open(a.doc, "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")
    with open(os.path.join(work, "numbers.json"), "w") as f:
        json.dump({"pointing": psum.to_dict(), "discriminativeness": dsum.to_dict(),
                   "effect_two_class": effect.to_dict(), "aopc": pert_table.to_dict(),
                   "random_aopc": float(rnd["aopc"].mean()), "timings_s": timings, "runtime_s": runtime,
                   "argmax_where": loc_all.to_dict(), "argmax_where_multi": loc_multi.to_dict()},
                  f, indent=1, default=str)
    print(f"wrote {a.doc} ({runtime / 60:.1f} min)")


if __name__ == "__main__":
    main()
