"""Held-out mAP and per-class AP of the shipped scene classifiers on freshly generated scenes.

    python -m clrp.models.bundled_metrics [--model bundled|bundled-hard|all] [-n 1000] [--seed 20000000]

``bundled`` is evaluated on the easy preset (:mod:`clrp.scenes.easy`), ``bundled-hard`` on the hard
preset (:mod:`clrp.scenes.hard`). Seeds default to 20_000_000+, disjoint from the training seeds
(< 10_000_000) and from the held-out set recorded in the metadata (10_000_000+).
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import torch

from ..scenes import easy
from . import bundled


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Non-interpolated AP (area under the precision-recall step curve, as sklearn's
    ``average_precision_score``); ties broken stably. NaN if there are no positives."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    npos = int(labels.sum())
    if npos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, l = scores[order], labels[order]
    # group ties: thresholds at distinct score values
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(l)[distinct]
    fp = (distinct + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / npos
    prev_recall = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev_recall) * precision))


#: shipped model -> (scene preset, preprocessing factory)
def _model_world(name: str):
    from ..scenes import hard
    from . import bundled_hard

    worlds = {"bundled": (easy, bundled.bundled_preprocessing),
              "bundled-hard": (hard, bundled_hard.hard_preprocessing)}
    if name not in worlds:
        raise ValueError(f"no scene world for model {name!r}; choose from {', '.join(worlds)}")
    return worlds[name]


@torch.no_grad()
def predict_scenes(model: torch.nn.Module, scene_list: Sequence, batch: int = 128, preprocessing=None) -> np.ndarray:
    pp = preprocessing or bundled.bundled_preprocessing()
    out = []
    model.eval()
    param = next(model.parameters())
    for i in range(0, len(scene_list), batch):
        x = bundled.scenes_to_tensor([s.image for s in scene_list[i:i + batch]], pp)
        out.append(model(x.to(param.device, param.dtype)).float().cpu().numpy())
    return np.concatenate(out, 0)


def evaluate_model(model: torch.nn.Module, n: int = 1000, seed: int = bundled.METRICS_SEED_BASE,
                   model_name: str = "bundled", scene_list: Sequence | None = None) -> dict:
    """mAP and per-class AP of ``model`` on ``n`` scenes with seeds ``seed .. seed + n - 1`` of the
    world ``model_name`` was trained on (``bundled``: easy scenes, ``bundled-hard``: hard scenes);
    ``scene_list``: those scenes, already generated."""
    world, make_pp = _model_world(model_name)
    sc = list(scene_list) if scene_list is not None else world.generate_dataset(n, seed)
    logits = predict_scenes(model, sc, preprocessing=make_pp())
    labels = np.stack([s.labels for s in sc])
    per = {name: average_precision(logits[:, k], labels[:, k]) for k, name in enumerate(world.CLASS_NAMES)}
    vals = [v for v in per.values() if not np.isnan(v)]
    pred = logits > 0
    return {
        "mAP": float(np.mean(vals)),
        "per_class_AP": per,
        "exact_match": float((pred == labels.astype(bool)).all(1).mean()),
        "n_scenes": len(sc),
        "seeds": [seed, seed + len(sc) - 1],
        "model": model_name,
        "preset": "scenes-hard" if model_name == "bundled-hard" else "scenes",
    }


def format_metrics(m: dict) -> str:
    lines = [f"model: {m.get('model', 'bundled')} on {m.get('preset', 'scenes')} scenes",
             f"held-out scenes: {m['n_scenes']} (seeds {m['seeds'][0]}..{m['seeds'][1]})",
             f"mAP: {m['mAP']:.4f}", f"exact-match accuracy (logit > 0): {m['exact_match']:.4f}", "per-class AP:"]
    lines += [f"  {k:<10s} {v:.4f}" for k, v in m["per_class_AP"].items()]
    return "\n".join(lines)


def bundled_metrics(n: int = 1000, seed: int = bundled.METRICS_SEED_BASE, model: str = "bundled") -> dict:
    """Metrics of a shipped model (``bundled`` or ``bundled-hard``, loaded through
    ``clrp.models.load``) on its own scene world."""
    from . import load

    return evaluate_model(load(model).model, n=n, seed=seed, model_name=model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="held-out mAP of the shipped clrp scene models")
    ap.add_argument("--model", default="all", choices=["all", "bundled", "bundled-hard"])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=bundled.METRICS_SEED_BASE)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = ["bundled", "bundled-hard"] if a.model == "all" else [a.model]
    for i, name in enumerate(names):
        if i:
            print()
        print(format_metrics(bundled_metrics(a.n, a.seed, name)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
