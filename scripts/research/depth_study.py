#!/usr/bin/env python
"""The paper's effect against depth: how alike are the LRP maps of two classes, per network depth?

    python scripts/research/depth_study.py --world scenes --with-shipped       # easy world: 3, 4, 5 (shipped), 9 convs
    python scripts/research/depth_study.py --models artifacts/depth_study      # hard world, models trained by:
    python scripts/assets/train_hard_model.py --depths 4,8,13 --depth-out artifacts/depth_study --out /tmp/unused

``--world scenes-hard`` (default): the networks of :data:`clrp.models.bundled_hard.DEPTH_CONFIGS`
(4, 8 and 13 convs of the VGG pattern, one hidden dense layer, batch norm folded), trained on the
same hard scenes with the same recipe; ``--with-shipped`` adds ``bundled-hard`` (8 convs).
``--world scenes``: the easy world's networks of :data:`clrp.models.bundled.DEPTH_CONFIGS` (3, 4 and 9
convs, committed in ``research/depth_study_models/``, trained by
``scripts/assets/train_bundled_model.py --features ...`` with the shipped model's recipe on its training
scenes); ``--with-shipped`` adds the shipped ``bundled`` model (5 convs). On the same ``--n``
held-out two-class scenes of the world (the first scenes from seed ``--seed`` on whose class set
has exactly two classes), for each depth:

1. the mean (and median) Pearson r between the channel-summed input maps of the two present
   classes, for lrp, clrp1, clrp2 and sglrp (rules ``paper``, the model's zB box), and the share of
   scenes with r > 0.9; the share of scenes where the model scores a present class negative (its
   LRP map, seeded with the signed logit, is then sign-flipped) and LRP's mean r without them;
2. the layer-by-layer table of RESULTS.md: mean Pearson r between the two classes' relevance
   tensors at each conv, pooling and dense layer's output, from the output downwards
   (``clrp.layer_relevance(..., spatial=True)``; CLRP: the signed difference target - dual).

Writes ``--doc`` (markdown; default ``docs/results/depth_study.md`` for the easy world,
``docs/results/depth_study_hard.md`` for the hard one) and a JSON of the numbers; ``--append-doc``
appends another generated study document (e.g. the other world's) as a further section.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import clrp  # noqa: E402
from clrp.scenes import easy, hard, presets  # noqa: E402
from clrp.models import bundled, bundled_hard  # noqa: E402
from scripts.tables import md_table  # noqa: E402

METHODS = ("lrp", "clrp1", "clrp2", "sglrp")
LAYER_METHODS = ("lrp", "clrp1", "clrp2")
KINDS = {"conv2d": "conv", "linear": "linear", "max_pool2d": "maxpool", "adaptive_avg_pool2d": "adaptive_avgpool"}

#: What differs between the two scene worlds; the measurement is the same.
WORLDS = {
    "scenes-hard": dict(
        shipped="bundled-hard", shipped_label="8 (bundled-hard)", depths="4,8,13",
        stem="scene_vgg_d", models=os.path.join(ROOT, "artifacts", "depth_study"), configs="bundled_hard",
        doc=os.path.join(ROOT, "docs", "results", "depth_study_hard.md"), adjective="hard",
        preprocessing=bundled_hard.hard_preprocessing, shipped_command=None),
    "scenes": dict(
        shipped="bundled", shipped_label="5 (bundled)", depths="3,4,9",
        stem="scenes_vgg_d", models=os.path.join(ROOT, "research", "depth_study_models"),
        configs="bundled", doc=os.path.join(ROOT, "docs", "results", "depth_study.md"), adjective="easy",
        preprocessing=lambda size=bundled.INPUT_SIZE: bundled.bundled_preprocessing(),
        shipped_command="python scripts/assets/train_bundled_model.py"),
}


def scene_classes(world: str, seed: int) -> list[int]:
    if world == "scenes-hard":
        return hard.scene_classes(seed)
    return sorted({o.class_index for o in easy.generate_scene(seed).objects})


def two_class_seeds(n: int, seed: int, world: str = "scenes-hard") -> list[int]:
    out, s = [], seed
    while len(out) < n:
        if len(scene_classes(world, s)) == 2:
            out.append(s)
        s += 1
    return out


def load_depth_model(folder: str, depth, device: str, world: str = "scenes-hard"):
    w = WORLDS[world]
    if depth == "shipped":
        from clrp import models

        lm = models.load(w["shipped"])
        return lm.model.eval().to(device), lm.meta
    model, meta = bundled.load_trained(os.path.join(folder, f"{w['stem']}{depth}.pt"))
    return model.to(device), meta


def pearson(a: torch.Tensor) -> float:
    a = a.reshape(2, -1).double().cpu().numpy()
    if a[0].std() == 0 or a[1].std() == 0:
        return float("nan")
    return float(np.corrcoef(a)[0, 1])


def study(model, seeds, device, input_size: int = bundled_hard.INPUT_SIZE,
          world: str = "scenes-hard") -> tuple[list[dict], list[str]]:
    from clrp import engine
    from clrp.methods import layer_relevance

    gen = presets.preset_module(world)
    pp = WORLDS[world]["preprocessing"](input_size)
    plan = engine.plan_for(model, torch.zeros(1, 3, *pp.input_size, device=device))
    nodes = [nd for nd in plan.graph.nodes if nd.op_name in KINDS and plan.graph.carries[nd.index]]
    layers = [nd.name for nd in nodes][::-1][1:]   # from the output down; the output layer holds only the seed
    kinds = {nd.name: KINDS[nd.op_name] for nd in nodes}
    rows = []
    for s in seeds:
        sc = gen.generate_scene(s)
        x = pp.to_tensor(sc.image).repeat(2, 1, 1, 1).to(device)
        t = [o.class_index for o in sc.objects]   # one object per class in both worlds
        with torch.no_grad():
            neg = bool((model(x[:1])[0, t] < 0).any())   # a present class scored negative: its LRP map flips sign
        for m in METHODS:
            r = clrp.explain(model, x, t, m, box=pp.box).sum(1)
            rows.append({"seed": s, "method": m, "layer": "input map (channel sum)", "r": pearson(r), "neg": neg})
            if m in LAYER_METHODS:
                for l in layers:
                    r = layer_relevance(model, x, t, l, method=m, spatial=True, box=pp.box)
                    rows.append({"seed": s, "method": m, "layer": f"{l} ({kinds[l]})", "r": pearson(r)})
    return rows, [f"{l} ({kinds[l]})" for l in layers]


def write(a, seeds, done, summary, layer_tables, metas, times, started, t_all):
    import pandas as pd

    w = WORLDS[a.world]
    order = sorted(range(len(done)), key=lambda i: summary[i]["convs"])   # rows by depth, shipped model included
    done, summary = [done[i] for i in order], [summary[i] for i in order]
    labels = [f"{d}" if d != "shipped" else w["shipped_label"] for d in done]

    def trained_by(meta):
        tr = meta.get("training", {})
        cmd = tr.get("command") or w["shipped_command"] or "?"
        device = tr.get("device") or (f"CPU, torch threads {tr['threads']}" if "threads" in tr else "?")
        return f"Trained by `{cmd}` on {device}."

    tab = pd.DataFrame(summary, index=pd.Index(labels, name="model (convs)"))
    dev = torch.cuda.get_device_name(a.device) if str(a.device).startswith("cuda") else "no GPU"
    L = [f"# The paper's effect against depth: the {w['adjective']} scene world (`{a.world}`)\n",
         f"Generated by `python scripts/research/depth_study.py {shlex.join(a.argv)}` on {started:%Y-%m-%d %H:%M} UTC "
         f"in {(time.perf_counter() - t_all) / 60:.1f} min ({os.cpu_count()} CPU cores, torch threads "
         f"{torch.get_num_threads()}, device {a.device}: {dev}).\n",
         "## Setting\n",
         f"- World: `{a.world}` ({presets.PRESETS[a.world].description}).",
         f"- Models: VGG-pattern `scene_vgg` networks of `clrp.models.{w['configs']}.DEPTH_CONFIGS` (2x2 max-pools, "
         "a global max-pool, one hidden dense layer of 256 units; batch norm during training, folded), conv widths: "
         + "; ".join(f"{lab}: {[v for v in metas[d]['architecture']['features'] if v not in ('M', 'G')]}"
                     for lab, d in zip(labels, done)) + ". "
         + " ".join(dict.fromkeys(trained_by(metas[d]) for d in done)),
         f"- Scenes: the first {a.n} {w['adjective']} scenes from seed {a.seed} on with exactly two classes (seeds "
         f"{seeds[0]}..{seeds[-1]}; held out from training), the same for every depth.",
         "- Rules: preset `paper` (zB first conv with the model's box, z+ elsewhere); LRP seed = target logit; "
         "CLRP1 dual = uniform, CLRP2 = negated weights, contrast = clamp; SGLRP = softmax-gradient seed.",
         "- r = Pearson correlation between the two classes' maps (input: channel-summed relevance at the model's "
         "input size), "
         "per scene, then averaged over scenes (undefined r of a constant map is left out). "
         "`share with a present logit < 0`: scenes where the model scores one of the two present classes below 0 "
         "(LRP's seed is the signed logit, so that class's map is sign-flipped); `lrp mean r, both logits > 0`: "
         "LRP's mean r over the other scenes.\n",
         *([f"**Incomplete: {len(done)} model(s); the study asks for at least three depths.** "
            + (open(a.note, encoding="utf-8").read().strip() if a.note and os.path.isfile(a.note) else "") + "\n"]
           if len(done) < 3 else
           ([open(a.note, encoding="utf-8").read().strip() + "\n"] if a.note and os.path.isfile(a.note) else [])),
         "## Per depth: mean Pearson r between the two classes' input maps\n",
         md_table(tab.astype(object)), ""]
    for lab, d in zip(labels, done):
        L.append(f"\n## Layer by layer, {lab} convs\n")
        L.append("Mean Pearson r between the two classes' relevance at each layer's output, from the output "
                 "downwards (CLRP: signed difference target - dual, before the clamp, which is applied to the "
                 "input map only):\n")
        L.append(md_table(layer_tables[d]))
    if a.append_doc:
        other = open(a.append_doc, encoding="utf-8").read().strip().splitlines()
        L.append(f"\n---\n\n# Included: `{os.path.relpath(a.append_doc, ROOT)}` (generated separately, as is)\n")
        L.extend(("#" + ln) if ln.startswith("#") else ln for ln in other)
    os.makedirs(os.path.dirname(os.path.abspath(a.doc)), exist_ok=True)
    with open(a.doc, "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")
    with open(a.json or os.path.splitext(a.doc)[0] + ".json", "w") as f:
        json.dump({"summary": tab.reset_index().to_dict("records"), "seeds": seeds,
                   "layers": {str(d): layer_tables[d].reset_index().to_dict("records") for d in done},
                   "seconds": times}, f, indent=1, default=float)


def main(argv=None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=sorted(WORLDS), default="scenes-hard",
                    help="scene world and its model family (default: scenes-hard)")
    ap.add_argument("--models", default=None, help="folder of the trained networks (default: per world: "
                    "artifacts/depth_study, research/depth_study_models)")
    ap.add_argument("--depths", default=None, help="comma-separated conv counts (default: per world: 4,8,13; 3,4,9)")
    ap.add_argument("--with-shipped", action="store_true",
                    help="add the shipped model of the world (bundled-hard: 8 convs; bundled: 5 convs) as one more row")
    ap.add_argument("--n", type=int, default=60, help="two-class scenes")
    ap.add_argument("--seed", type=int, default=30_000_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default=None, help="a markdown file inserted before the tables (hand-written)")
    ap.add_argument("--doc", default=None, help="markdown output (default: per world: "
                    "docs/results/depth_study_hard.md, docs/results/depth_study.md)")
    ap.add_argument("--json", default=None, help="numbers (default: <doc>.json)")
    ap.add_argument("--append-doc", default=None, help="a generated study document to append as a further section")
    a = ap.parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else [str(x) for x in argv]   # what the document records
    w = WORLDS[a.world]
    a.models = a.models or w["models"]
    a.depths = w["depths"] if a.depths is None else a.depths
    a.doc = a.doc or w["doc"]
    torch.set_num_threads(a.threads)
    started = dt.datetime.now(dt.timezone.utc)
    t_all = time.perf_counter()
    seeds = two_class_seeds(a.n, a.seed, a.world)
    depths = [int(d) for d in a.depths.split(",") if d.strip()] + (["shipped"] if a.with_shipped else [])
    summary, layer_tables, metas, times, done = [], {}, {}, {}, []
    for d in depths:
        t0 = time.perf_counter()
        model, meta = load_depth_model(a.models, d, a.device, a.world)
        rows, layers = study(model, seeds, a.device, int(meta["preprocessing"]["input_size"][0]), a.world)
        df = pd.DataFrame(rows)
        inp = df[df["layer"] == "input map (channel sum)"]
        rec = {"convs": meta.get("n_convs", bundled.n_convs(meta["architecture"])),
               "parameters": sum(p.numel() for p in model.parameters()),
               "heldout_mAP": meta.get("heldout_metrics", {}).get("mAP", float("nan"))}
        for m in METHODS:
            v = inp[inp["method"] == m]["r"]
            rec[f"{m} mean r"] = float(v.mean())
        for m in METHODS:
            v = inp[inp["method"] == m]["r"]
            rec[f"{m} median r"] = float(v.median())
        lrp = inp[inp["method"] == "lrp"]
        rec["lrp share r > 0.9"] = float((lrp["r"] > 0.9).mean())
        rec["share with a present logit < 0"] = float(lrp["neg"].mean())
        rec["lrp mean r, both logits > 0"] = float(lrp[~lrp["neg"].astype(bool)]["r"].mean())
        summary.append(rec)
        lt = df[df["method"].isin(LAYER_METHODS)].pivot_table(index="layer", columns="method", values="r",
                                                              aggfunc="mean")
        layer_tables[d] = lt.loc[[l for l in layers if l in lt.index] + ["input map (channel sum)"]]
        metas[d] = meta
        times[d] = time.perf_counter() - t0
        write(a, seeds, done + [d], summary, layer_tables, metas, times, started, t_all)
        done.append(d)
        print(f"depth {d}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()})} "
              f"({times[d]:.0f} s)", flush=True)
    print(f"wrote {a.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
