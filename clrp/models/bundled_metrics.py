"""Held-out mAP and per-class AP of the bundled scene classifier on freshly generated scenes.

    python -m clrp.models.bundled_metrics [-n 1000] [--seed 20000000]

Seeds default to 20_000_000+, disjoint from the training seeds (< 10_000_000) and from the
held-out set recorded in the metadata (10_000_000+).
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import torch

from .. import scenes
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


@torch.no_grad()
def predict_scenes(model: torch.nn.Module, scene_list: Sequence, batch: int = 128) -> np.ndarray:
    pp = bundled.bundled_preprocessing()
    out = []
    model.eval()
    for i in range(0, len(scene_list), batch):
        x = bundled.scenes_to_tensor([s.image for s in scene_list[i:i + batch]], pp)
        out.append(model(x).float().numpy())
    return np.concatenate(out, 0)


def evaluate_model(model: torch.nn.Module, n: int = 1000, seed: int = bundled.METRICS_SEED_BASE) -> dict:
    """mAP and per-class AP of ``model`` on ``n`` scenes with seeds ``seed .. seed + n - 1``."""
    sc = scenes.generate_dataset(n, seed)
    logits = predict_scenes(model, sc)
    labels = np.stack([s.labels for s in sc])
    per = {name: average_precision(logits[:, k], labels[:, k]) for k, name in enumerate(scenes.CLASS_NAMES)}
    vals = [v for v in per.values() if not np.isnan(v)]
    pred = logits > 0
    return {
        "mAP": float(np.mean(vals)),
        "per_class_AP": per,
        "exact_match": float((pred == labels.astype(bool)).all(1).mean()),
        "n_scenes": n,
        "seeds": [seed, seed + n - 1],
    }


def format_metrics(m: dict) -> str:
    lines = [f"held-out scenes: {m['n_scenes']} (seeds {m['seeds'][0]}..{m['seeds'][1]})",
             f"mAP: {m['mAP']:.4f}", f"exact-match accuracy (logit > 0): {m['exact_match']:.4f}", "per-class AP:"]
    lines += [f"  {k:<10s} {v:.4f}" for k, v in m["per_class_AP"].items()]
    return "\n".join(lines)


def bundled_metrics(n: int = 1000, seed: int = bundled.METRICS_SEED_BASE) -> dict:
    """Metrics of the shipped model (loaded through ``clrp.models.load('bundled')``)."""
    from . import load

    return evaluate_model(load("bundled").model, n=n, seed=seed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="held-out mAP of the bundled clrp scene model")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=bundled.METRICS_SEED_BASE)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(format_metrics(bundled_metrics(a.n, a.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
