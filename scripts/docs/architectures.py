"""The model coverage matrix: the engine on the CNNs and vision transformers people use.

    python scripts/docs/architectures.py > docs/results/architectures.md
    python scripts/docs/architectures.py --before 8d09ecf > docs/results/architectures.md  # + trace times
    python scripts/docs/architectures.py --models resnet18 vit_b_16     # some rows only

docs/MODEL_COVERAGE.md explains the table. For each torchvision/timm architecture (random
weights; 64 px inputs, 75 px for Inception v3, the models' own size for the transformers that
fix it) it prints the graph size, whether each LRP-family method runs (or why not), the default
feature layer, the conservation ratio sum(input relevance) / seed, and how many LRP-family maps
are zero everywhere, with how many of those came with a ``ClrpWarning`` (all of them must).

CNNs use the ``paper`` preset (zB, z+, biases ignored) in two settings:

- "zero biases": default initialisation with each BatchNorm's running variance set to the
  second moment of its input (running means and biases stay zero), so every folded bias is 0;
- "non-zero biases": the same with random BatchNorm running means and shifts, as in a trained
  network: "biases ignored" then loses the relevance of units that only a bias switched on.

Where zennit can run the same composite (its ResNet canonizer, or plain chains), its ratio and
the relative difference between its map and clrp's are shown next to clrp's. Transformers use the
``attnlrp`` preset with their default initialisation (the classifier's weights drawn from
N(0, 0.05²): torchvision initialises ViT's head to zero, which makes every logit and map zero).
Everything runs in float64: with random weights and calibrated BatchNorm these networks amplify
float32 rounding (two correct implementations can differ by 1e-3), which would hide what the
table measures.

Trace time (seconds to build the plan of a model, i.e. the trace, in float64 at the row's input
size): "now" in this process with an empty on-disk trace cache; with ``--before REV`` also the
code of git revision REV, and this code in a new process reading the cache entry "now" wrote
("cached"), each in a fresh process that builds the model first.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]

# Every conv/dense output reaches the next conv/dense only through a ReLU (possibly after a
# residual add): z+/zB without biases conserve exactly. The others have linear bottlenecks
# (a conv whose output is not rectified) or non-ReLU activations: z+ loses the relevance of
# units that receive relevance but have no positive contribution; docs/MODEL_COVERAGE.md reports it.
RELU_NETS = {"alexnet", "vgg16_bn", "resnet18", "resnet50", "resnext50_32x4d", "densenet121", "googlenet",
             "inception_v3", "squeezenet1_1", "timm:resnet18", "timm:vgg11"}
CNNS = ["alexnet", "vgg16_bn", "resnet18", "resnet50", "resnext50_32x4d", "densenet121", "mobilenet_v2",
        "mobilenet_v3_small", "efficientnet_b0", "googlenet", "inception_v3", "squeezenet1_1",
        "shufflenet_v2_x1_0", "regnet_y_400mf", "mnasnet0_5", "convnext_tiny",
        "timm:resnet18", "timm:efficientnet_b0", "timm:convnext_atto", "timm:vgg11"]
#: Vision transformers and their input size (those that fix it: their own; Swin-T any multiple of 32).
TRANSFORMERS = {"vit_b_16": 224, "swin_t": 64, "maxvit_t": 224, "timm:vit_tiny_patch16_224": 224,
                "timm:deit_tiny_distilled_patch16_224": 224, "timm:swin_tiny_patch4_window7_224": 224}
LRP_FAMILY = ("lrp", "clrp1", "clrp2", "sglrp")
ZENNIT_CANONIZED = {"resnet18", "resnet50", "resnext50_32x4d", "alexnet", "vgg16_bn", "timm:vgg11"}


def build(name, classes=10):
    """The architecture with its default random initialisation (seeded), in eval mode; a
    transformer's classifier drawn from N(0, 0.05²) (torchvision's ViT head starts at zero)."""
    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm

        model = timm.create_model(name[5:], pretrained=False, num_classes=classes).eval()
    else:
        import torchvision

        kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, num_classes=classes, **kw).eval()
    if name in TRANSFORMERS:
        from clrp.models.architectures import find_classifier

        torch.nn.init.normal_(model.get_submodule(find_classifier(model)).weight, std=0.05)
    return model


def calibrate(model, x):
    """Each BatchNorm's running variance := the second moment of its input on ``x`` (means and
    biases untouched), so activations keep their scale through an untrained network."""
    handles = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            def pre(mod, args):
                a = args[0]
                mod.running_var.copy_(a.pow(2).mean([d for d in range(a.ndim) if d != 1]).clamp(min=1e-4))
            handles.append(m.register_forward_pre_hook(pre))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return model


def inputs(name):
    size = TRANSFORMERS.get(name) or (75 if name == "inception_v3" else 64)
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def randomize_shifts(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def zennit_paper(model, name, x, t, seed):
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Norm, Pass, ZBox, ZPlus
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Activation, AvgPool, Convolution

    from clrp.rules import IMAGENET_MEAN, IMAGENET_STD, box_from_normalization

    low, high = box_from_normalization(IMAGENET_MEAN, IMAGENET_STD)
    low = low.view(1, 3, 1, 1).to(x.dtype).expand_as(x)
    high = high.view(1, 3, 1, 1).to(x.dtype).expand_as(x)
    canon = [ResNetCanonizer()] if "res" in name else [SequentialMergeBatchNorm()]
    composite = SpecialFirstLayerMapComposite(
        layer_map=[(Activation, Pass()), (Sum, Norm(1e-9)), (AvgPool, Norm(1e-6)),
                   (Convolution, ZPlus(1e-9, zero_params="bias")), (nn.Linear, ZPlus(1e-9, zero_params="bias"))],
        first_map=[(Convolution, ZBox(low, high, 1e-9))], canonizers=canon)
    hooked = copy.deepcopy(model)
    for m in hooked.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 0.0  # zennit's merge leaves x / sqrt(1 + eps) behind; see tests/test_oracles.py
    with torch.no_grad():
        logits = hooked(x)
    with Gradient(model=hooked, composite=composite) as attributor:
        _, rel = attributor(x.clone().requires_grad_(True), torch.eye(logits.shape[1], dtype=x.dtype)[t] * logits)
    return rel, (rel.flatten(1).sum(1) / seed).mean().item()


def explain_family(model, x, t, rules):
    """Every LRP-family method on ``model``: ``{method: map or the refusal}``, the ``lrp`` map's
    ratio to the seed, and (all-zero maps, those of them that came with a ClrpWarning)."""
    import clrp
    from clrp import engine
    from clrp.errors import ClrpError

    maps, zero, warned = {}, 0, 0
    for method in LRP_FAMILY:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                r = clrp.explain(model, x, t, method, rules=rules)
            except ClrpError as exc:
                maps[method] = str(exc)
                continue
        said = any(issubclass(w.category, engine.ClrpWarning) and "zero everywhere" in str(w.message) for w in caught)
        blank = int((r.flatten(1).abs().amax(1) == 0).sum())
        zero += blank
        warned += blank if said else 0
        maps[method] = r
    ratio = None
    if isinstance(maps["lrp"], torch.Tensor):
        seed = engine.forward(model, x).gather(1, t[:, None]).squeeze(1)
        ratio = (maps["lrp"].flatten(1).sum(1) / seed).mean().item()
    return maps, ratio, (zero, warned)


def time_plan(name, code: str, cache: str) -> dict:
    """In a fresh process: build the model, then time the plan (the trace) with the clrp of ``code``."""
    env = {**os.environ, "CLRP_TRACE_CACHE": cache, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--time-plan", name, "--code", code], env=env,
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if out.returncode == 0 and lines else {"error": (out.stderr.strip() or "?")[-300:]}


def _time_plan_here(name: str, code: str) -> None:
    sys.path.insert(0, code)
    torch.set_num_threads(1)
    from clrp import engine
    from clrp.engine import trace as T

    model, x = build(name).double(), inputs(name).double()
    exported = []
    original = T._export
    T._export = lambda *a, **k: exported.append(1) or original(*a, **k)
    start = time.perf_counter()
    engine.plan_for(model, x)
    print(json.dumps({"s": time.perf_counter() - start, "exported": bool(exported)}))


def cnn_row(name, model, x, times):
    from clrp import engine

    plan = engine.plan_for(model, x)
    layer = engine.last_feature_layer(model, x)
    row = [name, *times, str(len(plan.graph.nodes))]
    problem = plan.lrp_problem()
    if problem:
        return row + [f"refused: {_cut(problem)}", f"`{layer}`", "", "", "", "", ""]
    results, zeros = [], [0, 0]
    for biased in (False, True):  # a model of its own per setting: a ClrpWarning is said once per model
        model = build(name).double()
        for m in model.modules():  # BatchNorm eps 0 in both runs, so zennit's numbers are comparable
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = 0.0
        if biased:
            randomize_shifts(model)
        calibrate(model, x)
        t = engine.forward(model, x).argmax(1)
        maps, ratio, (zero, warned) = explain_family(model, x, t, "paper")
        zeros = [zeros[0] + zero, zeros[1] + warned]
        results.append((model, t, maps, ratio))
    refused = [f"{m}: {_cut(v)}" for m, v in results[0][2].items() if isinstance(v, str)]
    zr = zd = ""
    model, t, maps, _ = results[1]
    if name in ZENNIT_CANONIZED:
        seed = engine.forward(model, x).gather(1, t[:, None]).squeeze(1)
        theirs, z = zennit_paper(model, name, x, t, seed)
        zr = f"{z:.4f}"
        zd = f"{float((maps['lrp'] - theirs).abs().max() / theirs.abs().max()):.1e}"
    relu = "ReLU" if name in RELU_NETS else "other"
    lrp = "; ".join(refused) if refused else f"✓ ({relu})"
    return row + [lrp, f"`{layer}`", _fmt(results[0][3], 5), _fmt(results[1][3], 4), zr, zd,
                  f"{zeros[0]} ({zeros[1]} warned)"]


def transformer_row(name, model, x, times):
    from clrp import engine
    from clrp.errors import ClrpError

    plan = engine.plan_for(model, x)
    try:
        layer = f"`{engine.last_feature_layer(model, x)}`"
    except ClrpError as exc:
        layer = str(exc)
    t = engine.forward(model, x).argmax(1)
    maps, ratio, (zero, warned) = explain_family(model, x, t, "attnlrp")
    cells = ["✓" if isinstance(v, torch.Tensor) else f"refused: {_cut(v)}" for v in maps.values()]
    return [name, f"{x.shape[-1]} px", *times, str(len(plan.graph.nodes)), *cells, layer, _fmt(ratio, 4),
            f"{zero} ({warned} warned)"]


def _cut(text, limit=300):
    """A refusal for a table cell (the engine's text; long lists of layers cut)."""
    return text if len(text) <= limit else text[:limit].rstrip() + " …"


def _fmt(v, digits):
    return "" if v is None else f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", help="rows to run (default: every CNN and transformer)")
    ap.add_argument("--before", help="git revision whose trace time is shown next to today's (fresh processes)")
    ap.add_argument("--time-plan", help=argparse.SUPPRESS)
    ap.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.time_plan:
        return _time_plan_here(a.time_plan, a.code)
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    from clrp import engine

    names = a.models or CNNS + list(TRANSFORMERS)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLRP_TRACE_CACHE"] = str(Path(tmp) / "traces")
        before = None
        if a.before:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from bench_trace import code_at

            before = str(code_at(a.before, Path(tmp)))
        head = ["trace s, before", "now", "cached"] if before else ["trace s"]
        print(f"Load average at the start: {' '.join(f'{v:.1f}' for v in os.getloadavg())} "
              f"({os.cpu_count()} CPUs); one torch thread; times are indicative.\n")
        tables = {"cnn": [n for n in names if n not in TRANSFORMERS], "vit": [n for n in names if n in TRANSFORMERS]}
        for kind, rows in tables.items():
            if not rows:
                continue
            if kind == "cnn":
                cols = ["architecture", *head, "nodes", "LRP family (paper)", "default feature layer",
                        "ratio, zero biases", "ratio, non-zero biases", "zennit ratio, non-zero biases",
                        "clrp vs zennit", "all-zero maps"]
            else:
                cols = ["architecture", "input", *head, "nodes", *LRP_FAMILY, "default feature layer",
                        "ratio (attnlrp)", "all-zero maps"]
            print("| " + " | ".join(cols) + " |")
            print("|" + "|".join("---" if c in ("architecture", "LRP family (paper)", "default feature layer")
                                 else "---:" for c in cols) + "|")
            for name in rows:
                model, x = build(name).double(), inputs(name).double()
                start = time.perf_counter()
                engine.plan_for(model, x)
                times = [f"{time.perf_counter() - start:.1f}"]
                if before:
                    old = time_plan(name, before, "off")
                    new = time_plan(name, str(ROOT), os.environ["CLRP_TRACE_CACHE"])
                    cached = "failed" if "error" in new else f"{new['s']:.1f}" + (" (traced)" if new["exported"] else "")
                    times = ["failed" if "error" in old else f"{old['s']:.1f}", times[0], cached]
                row = (cnn_row if kind == "cnn" else transformer_row)(name, model, x, times)
                print("| " + " | ".join(row) + " |", flush=True)
            print()
        print(f"Load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}.")


if __name__ == "__main__":
    main()
