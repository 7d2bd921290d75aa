#!/usr/bin/env python
"""Retrain the bundled scene classifier from scratch, deterministically, on CPU.

    python scripts/assets/train_bundled_model.py            # defaults = the shipped model
    python scripts/assets/train_bundled_model.py --steps 200 --out /tmp/m   # quick smoke run
    python scripts/assets/train_bundled_model.py --features 32,M,64,M,128,G --name scenes_vgg_d3 --out DIR
                                                     # another depth (clrp.models.bundled.DEPTH_CONFIGS)

``--train-scenes`` scenes (seeds 0 .. n-1, disjoint from the held-out seeds 10_000_000+ and the
metrics seeds 20_000_000+) are generated once (in ``--workers`` processes; each scene is a pure
function of its seed, so the cache does not depend on the number of workers) and kept in memory
at the model's input geometry; batches are drawn from it with a seeded permutation and random
horizontal flips, and the model trains with a fixed number of torch threads. Multi-label: one logit per class,
BCEWithLogitsLoss; AdamW with a one-cycle learning rate. At the end the held-out mAP and
per-class AP are printed and written with the weights (state_dict, ``torch.save``) and a JSON
metadata file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clrp.scenes import easy, presets  # noqa: E402
from clrp.models import bundled  # noqa: E402
from clrp.models.bundled_metrics import evaluate_model, format_metrics  # noqa: E402


def build_cache(n: int, seed_base: int, workers: int):
    """``n`` easy scenes (seeds ``seed_base ..``) at the model's input geometry."""
    return presets.render_arrays("scenes", n, seed_base, bundled.bundled_preprocessing(), workers=workers,
                                       chunk=1000)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="processes generating the training scenes")
    ap.add_argument("--train-scenes", type=int, default=50000, help="distinct training scenes (cached in memory)")
    ap.add_argument("--heldout", type=int, default=1000, help="held-out scenes for the final metrics")
    ap.add_argument("--out", type=Path, default=bundled.ASSETS_DIR)
    ap.add_argument("--cache-file", type=Path, default=None,
                    help="optional .npz to save the generated training scenes to / load them from")
    ap.add_argument("--features", default=",".join(map(str, bundled.DEFAULT_CONFIG["features"])),
                    help="conv spec: channel counts (3x3 conv + BN + ReLU), M (2x2 max-pool), G (global max-pool); "
                         "default: the shipped model's")
    ap.add_argument("--name", default=bundled.WEIGHTS_FILE.stem,
                    help="file stem of the weights (.pt) and metadata (.json) written to --out")
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--monitor", type=int, default=300, help="held-out scenes for the progress mAP in the log")
    a = ap.parse_args(argv)

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)

    cfg = dict(bundled.DEFAULT_CONFIG, features=bundled.parse_features(a.features))
    cfg["num_classes"] = len(easy.CLASS_NAMES)
    model = bundled.build_model(cfg, batch_norm=True)  # BN folded into the convs after training
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters, config {cfg}", flush=True)

    n = a.train_scenes
    assert bundled.TRAIN_SEED_BASE + n <= bundled.HELDOUT_SEED_BASE
    t0 = time.time()
    if a.cache_file and a.cache_file.is_file():
        d = np.load(a.cache_file)
        cache_x, cache_y = d["x"], d["y"]
        assert len(cache_x) == n, f"{a.cache_file} holds {len(cache_x)} scenes, not {n}"
    else:
        cache_x, cache_y = build_cache(n, bundled.TRAIN_SEED_BASE, a.workers)
        if a.cache_file:
            np.save(a.cache_file.with_suffix(".tmp.npy"), np.zeros(0))  # fail early if not writable
            a.cache_file.with_suffix(".tmp.npy").unlink()
            np.savez(a.cache_file, x=cache_x, y=cache_y)
    gen_s = time.time() - t0
    print(f"generated {n} training scenes in {gen_s:.0f} s ({cache_x.nbytes / 1e9:.2f} GB)", flush=True)
    pp = bundled.bundled_preprocessing()
    g = torch.Generator().manual_seed(a.seed)
    torch.set_num_threads(a.threads)

    def batches():
        done = 0
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - a.batch + 1, a.batch):
                idx = perm[i:i + a.batch].numpy()
                flips = torch.rand(a.batch, generator=g).numpy() < 0.5
                xb = cache_x[idx].copy()
                xb[flips] = xb[flips][:, :, ::-1]
                yield pp.normalize(xb), torch.from_numpy(cache_y[idx])
                done += 1
                if done == a.steps:
                    return

    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.1)
    lossf = torch.nn.BCEWithLogitsLoss()

    mon_x, mon_y = build_cache(a.monitor, bundled.HELDOUT_SEED_BASE + 5_000_000, 1) if a.monitor else (None, None)

    def monitor_map() -> float:
        from clrp.models.bundled_metrics import average_precision

        model.eval()
        with torch.no_grad():
            lo = torch.cat([model(pp.normalize(mon_x[i:i + 100])) for i in range(0, len(mon_x), 100)]).numpy()
        model.train()
        return float(np.nanmean([average_precision(lo[:, k], mon_y[:, k]) for k in range(lo.shape[1])]))

    t0 = time.time()
    model.train()
    run = 0.0
    for step, (x, y) in enumerate(batches(), 1):
        loss = lossf(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()
        if step % a.log_every == 0 or step == a.steps:
            el = time.time() - t0
            mon = f" monitor mAP {monitor_map():.3f}" if a.monitor else ""
            print(f"step {step}/{a.steps} loss {run:.4f} lr {sched.get_last_lr()[0]:.2e}{mon} "
                  f"elapsed {el / 60:.1f} min eta {el / step * (a.steps - step) / 60:.1f} min", flush=True)
    train_s = time.time() - t0
    model.eval()
    folded = bundled.fold_batch_norm(model, cfg)
    with torch.no_grad():
        probe = pp.normalize(cache_x[:64])
        err = float((folded(probe) - model(probe)).abs().max())
    print(f"folded batch norm into the convolutions (max |logit difference| {err:.2e})")
    assert err < 1e-3, err
    model = folded

    t1 = time.time()
    metrics = evaluate_model(model, n=a.heldout, seed=bundled.HELDOUT_SEED_BASE)
    print(f"scene generation {gen_s / 60:.1f} min, training {train_s / 60:.1f} min; "
          f"held-out evaluation {time.time() - t1:.0f} s")
    print(format_metrics(metrics))

    a.out.mkdir(parents=True, exist_ok=True)
    wpath = a.out / f"{a.name}.pt"
    torch.save(model.state_dict(), wpath)
    meta = {
        "name": "bundled" if a.name == bundled.WEIGHTS_FILE.stem else a.name,
        "description": "VGG-style CNN (no batch norm) trained multi-label on clrp's procedural shape scenes",
        **({} if a.name == bundled.WEIGHTS_FILE.stem else {"n_convs": bundled.n_convs(cfg)}),
        "class_names": list(easy.CLASS_NAMES),
        "preprocessing": bundled.bundled_preprocessing().to_dict(),
        "scene_size": easy.SCENE_SIZE,
        "architecture": cfg,
        "training": {
            "seed": a.seed, "steps": a.steps, "batch": a.batch, "lr": a.lr, "weight_decay": a.weight_decay,
            "optimizer": "AdamW + OneCycleLR(pct_start=0.1)", "loss": "BCEWithLogitsLoss",
            "batch_norm": "BatchNorm2d after each conv during training, folded into the convs afterwards",
            "train_scene_seeds": [bundled.TRAIN_SEED_BASE, bundled.TRAIN_SEED_BASE + n - 1],
            "augmentation": "horizontal flip (p=0.5, from the seeded generator)",
            "threads": a.threads, "workers": a.workers, "generation_seconds": round(gen_s, 1),
            "train_seconds": round(train_s, 1),
            **({} if a.name == bundled.WEIGHTS_FILE.stem else {
                "command": "python scripts/assets/train_bundled_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "device": f"CPU ({os.cpu_count()} cores), torch threads {a.threads}"}),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        },
        "heldout_metrics": {
            "scene_seeds": [bundled.HELDOUT_SEED_BASE, bundled.HELDOUT_SEED_BASE + a.heldout - 1],
            "n_scenes": a.heldout,
            "mAP": metrics["mAP"],
            "per_class_AP": metrics["per_class_AP"],
        },
    }
    mpath = a.out / f"{a.name}.json"
    mpath.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {wpath} ({os.path.getsize(wpath) / 1e6:.2f} MB) and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
