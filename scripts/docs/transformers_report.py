"""LRP family on vision transformers (issue #18): which models run, their conservation, and the
two-class correlation of the maps (as docs/RESULTS.md reports it for CNNs). RANDOM WEIGHTS:
pretrained weights cannot be downloaded here, so these numbers say what the rules do on an
untrained network, not what a trained one has learnt.

    python scripts/docs/transformers_report.py coverage            # every model x method, conservation
    python scripts/docs/transformers_report.py two-class --n 40    # Pearson r of the two classes' maps
    python scripts/docs/transformers_report.py maxvit               # maxvit_t 224 px: where relevance goes

``coverage``: torchvision vit_b_16 (64 px), swin_t (64 px), a MaxViT of maxvit_t's design at
tiny width (32 px: maxvit_t needs 224 px), and timm vit/deit (distilled)/swin tiny configurations
when timm is installed, preset ``attnlrp``; per model and method: runs or the refusal, the
conservation ratio sum(R) / logit, for CLRP2 whether the map is non-negative and not all zero.
``two-class``: a small ViT (torchvision VisionTransformer, 4 layers, width 192, patch 16, 128 px)
with random weights on the bundled scenes with exactly two classes (seeds from 30,000,000, as
scripts/make_results.py), maps of both classes, Pearson r via clrp.evaluation.discriminativeness.
``maxvit``: torchvision maxvit_t with its default initialisation (seed 0), one 224 px image (seed
0), class 3: the conservation ratio of ``lrp`` under ``attnlrp``, with relative stabilisers, and
under ``cp_lrp``, and whether explain warned.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import clrp  # noqa: E402
from clrp.evaluation.discriminativeness import discriminativeness_rows, discriminativeness_summary  # noqa: E402
from clrp.rules import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from clrp.scenes import NUM_CLASSES, iter_scenes  # noqa: E402

METHODS = ("lrp", "clrp1", "clrp2", "sglrp")


def randomised(model, seed=0):
    """Random weights everywhere (torchvision leaves heads and biases at zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and name.endswith("bias") or "head" in name:
                p.normal_(0, 0.02)
    return model.eval()


def coverage_models():
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    yield "torchvision vit_b_16", torchvision.models.vit_b_16(num_classes=10, image_size=64), 64
    yield "torchvision swin_t", torchvision.models.swin_t(num_classes=10), 64
    yield "torchvision MaxVit (maxvit_t design, tiny)", MaxVit(
        input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16], block_layers=[1, 1],
        head_dim=4, stochastic_depth_prob=0.0, num_classes=10), 32
    try:
        import timm
    except ImportError:
        return
    small = dict(num_classes=10, img_size=32, patch_size=8, depth=2)
    yield "timm vit_tiny_patch16_224", timm.create_model("vit_tiny_patch16_224", **small), 32
    yield "timm deit_tiny_distilled_patch16_224", timm.create_model("deit_tiny_distilled_patch16_224", **small), 32
    yield "timm swin_tiny_patch4_window7_224", timm.create_model(
        "swin_tiny_patch4_window7_224", num_classes=10, img_size=56, depths=(1, 1, 1, 1), embed_dim=24,
        num_heads=(1, 1, 1, 1)), 56


def coverage(args):
    print("| model | method | runs | sum(R) / logit | CLRP2 >= 0 and not all zero | s |\n|---|---|---|---:|---|---:|")
    for name, model, size in coverage_models():
        model = randomised(model)
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = model(x)
        t = int(logits.argmax(1))
        for method in METHODS:
            start = time.perf_counter()
            try:
                r = clrp.explain(model, x, t, method, rules=args.rules)
            except clrp.errors.ClrpError as exc:
                print(f"| {name} | {method} | refused: {exc} | | | |")
                continue
            ratio = float(r.sum() / logits[0, t])
            ok = f"{bool((r >= 0).all() and r.abs().sum() > 0)}" if method == "clrp2" else ""
            print(f"| {name} | {method} | yes | {ratio:.3f} | {ok} | {time.perf_counter() - start:.1f} |")
        sys.stdout.flush()


def two_class(args):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = randomised(VisionTransformer(image_size=128, patch_size=16, num_layers=4, num_heads=3, hidden_dim=192,
                                         mlp_dim=768, num_classes=NUM_CLASSES))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rows, used = [], 0
    for scene in iter_scenes(args.n, seed=args.seed):
        classes = scene.class_indices
        if len(classes) != 2:
            continue
        used += 1
        x = ((torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255 - mean) / std)[None].expand(2, -1, -1, -1)
        t = torch.tensor(classes)
        maps = {}
        for method in METHODS:
            for rules in args.presets:
                r = clrp.explain(model, x, t, method, rules=rules)
                maps[f"{method} ({rules})"] = {str(c): r[k] for k, c in enumerate(classes)}
        rows += discriminativeness_rows(scene.name, maps)
    summary = discriminativeness_summary(rows)
    # a map seeded with a negative logit is the same pattern with the opposite sign: |r| shows it
    summary["abs_pearson_mean"] = {m: sum(abs(r["pearson"]) for r in rows if r["method"] == m) /
                                   sum(1 for r in rows if r["method"] == m) for m in summary.index}
    print(f"# two-class scenes: {used} of seeds {args.seed}..{args.seed + args.n - 1}; ViT with RANDOM weights\n")
    print(summary[["pearson_mean", "pearson_median", "abs_pearson_mean", "iou_top_mean", "n_pairs", "n_undefined"]]
          .sort_values("abs_pearson_mean").to_markdown(floatfmt=".3f"))


def maxvit(args):
    import warnings

    torch.manual_seed(0)
    model = torchvision.models.maxvit_t().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print("| rules | sum(R) / logit of `lrp` | warned |\n|---|---:|---|")
    for rules in ("attnlrp", {"preset": "attnlrp", "stabilizer": "relative"}, "cp_lrp"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, info = clrp.explain(model, x, 3, "lrp", rules=rules, return_info=True)
        print(f"| {rules} | {float(info.conservation[0]):.4f} | {info.vanished} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["coverage", "two-class", "maxvit"])
    p.add_argument("--rules", default="attnlrp", help="coverage: the preset")
    p.add_argument("--presets", nargs="+", default=["attnlrp", "cp_lrp"], help="two-class: the presets")
    p.add_argument("--n", type=int, default=40, help="two-class: scenes generated (those with two classes are used)")
    p.add_argument("--seed", type=int, default=30_000_000)
    args = p.parse_args(argv)
    {"coverage": coverage, "two-class": two_class, "maxvit": maxvit}[args.part](args)


if __name__ == "__main__":
    main()
