#!/usr/bin/env python
"""Train the ``bundled-hard`` scene classifier (and the depth-study models), deterministically.

    python scripts/assets/train_hard_model.py                         # the shipped model (8 convs), CUDA if present
    python scripts/assets/train_hard_model.py --depths 4,8,13 --depth-out artifacts/depth_study
    python scripts/assets/train_hard_model.py --train-scenes 256 --steps 20 --heldout 64 --monitor 0 \
        --out /tmp/m --depth-out /tmp/m       # quick smoke run (CPU)

``--train-scenes`` hard scenes (:mod:`clrp.scenes.hard`, seeds 0 .. n-1, disjoint from the
held-out seeds 10_000_000+ and the metrics seeds 20_000_000+) are generated once in ``--workers``
processes (each scene is a pure function of its seed: the cache does not depend on the number of
workers), resized to the model's 128 x 128 input and kept in memory (on the GPU when training
there). Every network of ``--depths`` (numbers of convs, :data:`clrp.models.bundled_hard.DEPTH_CONFIGS`)
is trained on the same scenes with the same recipe: BatchNorm2d after each conv, multi-label
BCEWithLogitsLoss, AdamW with a one-cycle learning rate, batches from a seeded permutation with
seeded horizontal flips (both drawn on the CPU, so the batches do not depend on the device), then
the batch norms are folded into the convs. On CUDA the forward/backward runs in bfloat16 autocast
(``--amp``; weights and optimiser in float32) with deterministic algorithms requested.

Outputs: the 8-conv network goes to ``--out`` as the shipped model (``bundled_hard_vgg.pt`` +
``bundled_hard_vgg.json`` with the held-out mAP on ``--heldout`` scenes of seeds 10,000,000+);
every depth (8 included) to ``--depth-out/scene_vgg_d<depth>.{pt,json}``. ``--variant NAME`` trains on
a world variant (:data:`clrp.scenes.hard.VARIANTS`, for headroom experiments): training, held-out
and monitor scenes all come from that variant, nothing replaces the shipped model, and the files
are ``scene_vgg_d<depth>_<variant>.{pt,json}``. The whole console
output is also written to ``--log`` (default ``<out>/bundled_hard_training_log.txt``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from clrp.scenes import hard, presets  # noqa: E402
from clrp.models import bundled, bundled_hard  # noqa: E402
from clrp.models.bundled_metrics import average_precision  # noqa: E402

SHIPPED_DEPTH = 8
_LOG = None


def log(msg: str = "") -> None:
    print(msg, flush=True)
    if _LOG is not None:
        _LOG.write(msg + "\n")
        _LOG.flush()


def build_cache(n: int, seed_base: int, workers: int, chunk: int = 250, size: int = bundled_hard.INPUT_SIZE,
                world: hard.HardWorld = hard.PRESET):
    """``n`` hard scenes of ``world`` (seeds ``seed_base ..``) at the model's input geometry."""
    return presets.render_arrays("scenes-hard", n, seed_base, bundled_hard.hard_preprocessing(size),
                                 workers=workers, chunk=chunk, world=world)


class GpuData:
    """uint8 NHWC images on the device; normalisation on the device."""

    def __init__(self, x: np.ndarray, y: np.ndarray, device: torch.device):
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(y).to(device)
        pp = bundled_hard.hard_preprocessing(x.shape[1])
        self.mean = torch.tensor(pp.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pp.std, device=device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.x)

    def get(self, idx: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
        idx = idx.to(self.x.device)
        xb = self.x[idx].permute(0, 3, 1, 2).float().div_(255.0)
        if flips is not None:
            f = flips.to(self.x.device).view(-1, 1, 1, 1)
            xb = torch.where(f, xb.flip(3), xb)
        return ((xb - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def logits_of(model, data: GpuData, batch: int = 256) -> np.ndarray:
    model.eval()
    out = [model(data.get(torch.arange(i, min(i + batch, len(data))))).float().cpu()
           for i in range(0, len(data), batch)]
    return torch.cat(out).numpy()


def ap_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    per = {name: average_precision(logits[:, k], labels[:, k]) for k, name in enumerate(hard.CLASS_NAMES)}
    return {"mAP": float(np.nanmean(list(per.values()))), "per_class_AP": per,
            "exact_match": float(((logits > 0) == labels.astype(bool)).all(1).mean())}


def train_one(depth: int, cfg: dict, train: GpuData, mon: GpuData | None, a, device) -> tuple:
    torch.manual_seed(a.seed)
    model = bundled.build_model(cfg, batch_norm=True).to(device).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[depth {depth}] {bundled.n_convs(cfg)} convs, {n_params} parameters, features {cfg['features']}")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps, pct_start=0.1)
    lossf = torch.nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(a.seed)   # batches and flips: CPU generator, device-independent
    n = len(train)
    amp = a.amp and device.type == "cuda"
    t0 = time.time()
    step, run = 0, 0.0
    model.train()
    while step < a.steps:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - a.batch + 1, a.batch):
            idx = perm[i:i + a.batch]
            flips = torch.rand(a.batch, generator=g) < 0.5
            x, y = train.get(idx, flips), train.y[idx.to(train.y.device)]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            loss = lossf(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == 1 or step % 25 == 0 or step == a.steps:
                run = 0.9 * run + 0.1 * loss.item() if step > 1 else loss.item()
            if step % a.log_every == 0 or step == a.steps:
                el = time.time() - t0
                mon_s = ""
                if mon is not None:
                    mon_s = f" monitor mAP {ap_metrics(logits_of(model, mon), mon.y.cpu().numpy())['mAP']:.3f}"
                    model.train()
                log(f"[depth {depth}] step {step}/{a.steps} loss {run:.4f} lr {sched.get_last_lr()[0]:.2e}{mon_s} "
                    f"elapsed {el:.0f} s")
            if step == a.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.time() - t0
    model.eval()
    cpu_model = model.to("cpu").to(memory_format=torch.contiguous_format).float()
    folded = bundled.fold_batch_norm(cpu_model, cfg)
    probe = train.get(torch.arange(min(64, n))).cpu().contiguous()  # noqa: E501
    with torch.no_grad():
        err = float((folded(probe) - cpu_model(probe)).abs().max())
    log(f"[depth {depth}] trained in {train_s:.0f} s; folded batch norm into the convs (max |logit difference| "
        f"{err:.2e}, float32 on the CPU)")
    assert err < 1e-3, err
    return folded, train_s, n_params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default=str(SHIPPED_DEPTH), help="comma-separated numbers of convs (4, 8, 13)")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                    help="bfloat16 autocast on CUDA (default on; ignored on the CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes generating scenes")
    ap.add_argument("--train-scenes", type=int, default=40000)
    ap.add_argument("--heldout", type=int, default=1000, help="held-out scenes for the final metrics")
    ap.add_argument("--monitor", type=int, default=300, help="held-out scenes for the progress mAP in the log")
    ap.add_argument("--log-every", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=bundled.ASSETS_DIR, help="where the shipped (8-conv) model goes")
    ap.add_argument("--depth-out", type=Path, default=None,
                    help="folder for every depth's weights + metadata (default: --out)")
    ap.add_argument("--log", type=Path, default=None)
    ap.add_argument("--input-size", type=int, default=bundled_hard.INPUT_SIZE,
                    help="model input side (default 128; the depth-study models trained on a CPU: 80)")
    ap.add_argument("--width", type=float, default=1.0,
                    help="scale every conv's channel count (depth-study models trained on a CPU: 0.5)")
    ap.add_argument("--variant", default="shipped", choices=list(hard.VARIANTS),
                    help="world variant to train on (default: the preset as shipped)")
    ap.add_argument("--cache-file", type=Path, default=None,
                    help="optional .npy pair prefix to save the generated training scenes to / load them from")
    a = ap.parse_args(argv)
    a.argv = sys.argv[1:] if argv is None else [str(x) for x in argv]   # what the metadata records
    if a.variant != "shipped" and a.depth_out is None:
        ap.error("--variant needs --depth-out (a variant's model never goes into the shipped assets)")
    return run(a)


def run(a) -> int:
    global _LOG
    a.out.mkdir(parents=True, exist_ok=True)
    depth_out = a.depth_out or a.out
    depth_out.mkdir(parents=True, exist_ok=True)
    tag = "" if a.variant == "shipped" else f"_{a.variant}"
    world = hard.VARIANTS[a.variant]   # every scene of this run comes from the variant's world
    # the shipped model's log only when this run writes the shipped model
    writes_shipped = (str(SHIPPED_DEPTH) in a.depths.split(",") and a.width == 1.0 and not tag
                      and a.input_size == bundled_hard.INPUT_SIZE)
    _LOG = open(a.log or (a.out / bundled_hard.LOG_FILE.name if writes_shipped else depth_out / f"training_log{tag}.txt"),
                "w", encoding="utf-8")
    started = dt.datetime.now(dt.timezone.utc)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    log(f"command: python scripts/assets/train_hard_model.py {' '.join(a.argv)}")
    log(f"started {started:%Y-%m-%d %H:%M:%S} UTC on {platform.node() or '?'}; device {dev_name}; torch {torch.__version__}; "
        f"python {platform.python_version()}; threads {a.threads}; scene workers {a.workers}")

    depths = [int(d) for d in a.depths.split(",") if d.strip()]
    for d in depths:
        if d not in bundled_hard.DEPTH_CONFIGS:
            raise SystemExit(f"--depths: {d} not in {sorted(bundled_hard.DEPTH_CONFIGS)}")
    n = a.train_scenes
    assert bundled_hard.TRAIN_SEED_BASE + n <= bundled_hard.HELDOUT_SEED_BASE
    t0 = time.time()
    cx, cy = (Path(f"{a.cache_file}{tag}.{k}.npy") for k in "xy") if a.cache_file else (None, None)
    if cx is not None and cx.is_file() and cy.is_file():
        x, y = np.load(cx), np.load(cy)
        assert len(x) == n, f"{cx} holds {len(x)} scenes, not {n}"
        log(f"loaded {n} training scenes from {cx} in {time.time() - t0:.0f} s")
    else:
        x, y = build_cache(n, bundled_hard.TRAIN_SEED_BASE, a.workers, size=a.input_size, world=world)
        log(f"generated {n} training scenes in {time.time() - t0:.0f} s ({x.nbytes / 1e9:.2f} GB at {a.input_size} px)")
        if cx is not None:
            np.save(cx, x)
            np.save(cy, y)
    gen_s = time.time() - t0
    t0 = time.time()
    hx, hy = build_cache(a.heldout, bundled_hard.HELDOUT_SEED_BASE, a.workers, size=a.input_size, world=world)
    mon = None
    if a.monitor:
        mx, my = build_cache(a.monitor, bundled_hard.HELDOUT_SEED_BASE + 5_000_000, a.workers, size=a.input_size,
                             world=world)
        mon = GpuData(mx, my, device)
    log(f"generated {a.heldout} held-out + {a.monitor} monitor scenes in {time.time() - t0:.0f} s")
    train = GpuData(x, y, device)
    del x

    summary = {}
    for d in depths:
        cfg = dict(bundled_hard.DEPTH_CONFIGS[d], num_classes=len(hard.CLASS_NAMES), input_size=a.input_size)
        if a.width != 1.0:
            cfg["features"] = [v if v in ("M", "G") else max(1, int(round(v * a.width))) for v in cfg["features"]]
        model, train_s, n_params = train_one(d, cfg, train, mon, a, device)
        m = ap_metrics(logits_of(model, GpuData(hx, hy, torch.device("cpu"))), hy)
        log(f"[depth {d}] held-out mAP {m['mAP']:.4f} on {a.heldout} scenes (seeds {bundled_hard.HELDOUT_SEED_BASE}..); "
            f"exact match {m['exact_match']:.3f}; per class " +
            ", ".join(f"{k} {v:.3f}" for k, v in m["per_class_AP"].items()))
        shipped = (d == SHIPPED_DEPTH and a.width == 1.0 and a.input_size == bundled_hard.INPUT_SIZE
                   and a.variant == "shipped")
        meta = {
            "name": "bundled-hard" if shipped else f"scene_vgg_d{d}{tag}",
            "description": (f"deeper VGG-pattern CNN ({bundled.n_convs(cfg)} convs, no batch norm) trained "
                            "multi-label on clrp's hard procedural scenes"),
            "class_names": list(hard.CLASS_NAMES),
            "preprocessing": bundled_hard.hard_preprocessing(a.input_size).to_dict(),
            "scene_size": hard.SCENE_SIZE,
            "scene_preset": "scenes-hard",
            **({"scene_variant": {a.variant: {k: repr(v) for k, v in hard.VARIANTS[a.variant].changes().items()}}}
               if tag else {}),
            "architecture": cfg,
            "n_convs": bundled.n_convs(cfg),
            "training": {
                "seed": a.seed, "steps": a.steps, "batch": a.batch, "lr": a.lr, "weight_decay": a.weight_decay,
                "optimizer": "AdamW + OneCycleLR(pct_start=0.1)", "loss": "BCEWithLogitsLoss",
                "batch_norm": "BatchNorm2d after each conv during training, folded into the convs afterwards",
                "train_scene_seeds": [bundled_hard.TRAIN_SEED_BASE, bundled_hard.TRAIN_SEED_BASE + n - 1],
                "augmentation": "horizontal flip (p=0.5, from the seeded CPU generator)",
                "device": dev_name, "amp": "bfloat16 autocast" if (a.amp and device.type == "cuda") else "none",
                "deterministic": "torch.use_deterministic_algorithms(True, warn_only=True), cudnn.benchmark off",
                "threads": a.threads, "workers": a.workers, "generation_seconds": round(gen_s, 1),
                "train_seconds": round(train_s, 1), "parameters": n_params,
                "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                "started_utc": f"{started:%Y-%m-%d %H:%M:%S}",
                "command": "python scripts/assets/train_hard_model.py " + " ".join(a.argv),
            },
            "heldout_metrics": {
                "scene_seeds": [bundled_hard.HELDOUT_SEED_BASE, bundled_hard.HELDOUT_SEED_BASE + a.heldout - 1],
                "n_scenes": a.heldout, "mAP": m["mAP"], "per_class_AP": m["per_class_AP"],
                "exact_match": m["exact_match"],
            },
        }
        sd = model.state_dict()
        paths = [(depth_out / f"scene_vgg_d{d}{tag}.pt", depth_out / f"scene_vgg_d{d}{tag}.json")]
        if shipped:
            paths.insert(0, (a.out / bundled_hard.WEIGHTS_FILE.name, a.out / bundled_hard.META_FILE.name))
        for wp, mp_ in paths:
            torch.save(sd, wp)
            mp_.write_text(json.dumps(meta, indent=2) + "\n")
            log(f"wrote {wp} ({os.path.getsize(wp) / 1e6:.2f} MB) and {mp_.name}")
        summary[d] = {"mAP": m["mAP"], "train_seconds": round(train_s, 1), "parameters": n_params}
    log(f"summary: {json.dumps(summary)}")
    log(f"finished {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    _LOG.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
