"""The engine on the CNNs people use: tracing, LRP support and conservation, per architecture.

    python scripts/architectures.py > docs/results/architectures.md

For each torchvision/timm architecture (random weights, 64 px inputs; 75 px for Inception v3)
it prints the trace time, the graph size, whether the LRP family runs (or why not), the default
feature layer, and the conservation ratio sum(input relevance) / seed of the ``paper`` preset
(zB, z+ and biases ignored) in two settings:

- "zero biases": default initialisation with each BatchNorm's running variance set to the
  second moment of its input (running means and biases stay zero), so every folded bias is 0;
- "non-zero biases": the same with random BatchNorm running means and shifts, as in a trained
  network: "biases ignored" then loses the relevance of units that only a bias switched on.

Where zennit can run the same composite (its ResNet canonizer, or plain chains), its ratio and
the relative difference between its map and clrp's are shown next to clrp's. Everything runs in
float64: with random weights and calibrated BatchNorm these networks amplify float32 rounding
(two correct implementations can differ by 1e-3), which would hide what the table measures.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import clrp  # noqa: E402
from clrp import engine  # noqa: E402
from clrp.rules import IMAGENET_MEAN, IMAGENET_STD, box_from_normalization  # noqa: E402
from tests.test_architectures import CNNS, RELU_NETS, build, calibrate, inputs  # noqa: E402

ZENNIT_CANONIZED = {"resnet18", "resnet50", "resnext50_32x4d", "alexnet", "vgg16_bn", "timm:vgg11"}


def randomize_shifts(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model


def ratio(model, x, t):
    seed = engine.forward(model, x).gather(1, t[:, None]).squeeze(1)
    r = clrp.explain(model, x, t, "lrp", rules="paper")
    return r, (r.flatten(1).sum(1) / seed).mean().item(), seed


def zennit_paper(model, name, x, t, seed):
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Norm, Pass, ZBox, ZPlus
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Activation, AvgPool, Convolution

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


def main():
    torch.set_num_threads(1)
    print("| architecture | trace s | nodes | LRP | default feature layer | ratio, zero biases | "
          "ratio, non-zero biases | zennit ratio, non-zero biases | clrp vs zennit |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|")
    for name in CNNS + ["vit_b_16", "swin_t"]:
        model = build(name).double()
        size = 224 if name == "vit_b_16" else None
        x = inputs(name) if size is None else torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        x = x.double()
        start = time.perf_counter()
        plan = engine.plan_for(model, x)
        traced = time.perf_counter() - start
        problem = plan.lrp_problem()
        layer = engine.last_feature_layer(model, x)
        row = [name, f"{traced:.1f}", str(len(plan.graph.nodes))]
        if problem:
            row += [f"refused: {problem}", f"`{layer}`", "", "", "", ""]
            print("| " + " | ".join(row) + " |")
            continue
        for m in model.modules():  # BatchNorm eps 0 in both runs, so zennit's numbers are comparable
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = 0.0
        calibrate(model, x)
        t = engine.forward(model, x).argmax(1)
        _, zero_bias, _ = ratio(model, x, t)
        randomize_shifts(model)
        calibrate(model, x)
        t = engine.forward(model, x).argmax(1)
        ours, biased, seed = ratio(model, x, t)
        zr = zd = ""
        if name in ZENNIT_CANONIZED:
            theirs, z = zennit_paper(model, name, x, t, seed)
            zr = f"{z:.4f}"
            zd = f"{float((ours - theirs).abs().max() / theirs.abs().max()):.1e}"
        relu = "ReLU" if name in RELU_NETS else "other"
        row += [f"yes ({relu})", f"`{layer}`", f"{zero_bias:.5f}", f"{biased:.4f}", zr, zd]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
