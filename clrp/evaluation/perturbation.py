"""Region perturbation ("pixel flipping", Samek et al. 2017) and AOPC.

Procedure for one image ``x`` [C, H, W], a relevance map ``R`` and a target class:
1. The image is cut into ``patch`` x ``patch`` regions on a grid starting at (0, 0); border
   regions are smaller when ``patch`` does not divide the size. The relevance is reduced over
   channels (sum) and SUMMED per region.
2. Orders: ``morf`` (most relevant first; descending), ``lerf`` (least relevant first;
   ascending), ``random`` (a permutation from ``torch.Generator().manual_seed(seed)``). Ties
   between equal region scores are broken in a random order (``ties="random"``, default: a
   permutation seeded with ``seed + 1``, so a run is reproducible from its recorded seed) or in
   raster order (``ties="raster"``, what this module did before 0.2). The runner passes each
   image its own seed (:func:`clrp.evaluation.protocol.image_seed` of the run seed and the image
   id, recorded in the row), so images do not share one permutation or one noise draw. Ties matter: a clamped
   CLRP map leaves most regions at exactly 0, and raster order then removes the top rows first
   (docs/RESULTS.md measures CLRP's AOPC both ways). Each curve records ``tie_share``, the
   fraction of regions whose score equals another's.
3. Step k (k = 1..K) replaces the first ``k * patches_per_step`` regions of the order by the
   baseline; step 0 is the unperturbed image. Baselines (in the model's input space, i.e. after
   normalisation):
   ``zeros`` (0 -- the dataset mean colour for a normalised input), ``mean`` (per-channel mean of
   the image), ``blur`` (a Gaussian blur of the image, sigma ``blur_sigma``, default patch/2),
   ``noise`` (Gaussian noise with the image's per-channel mean and std, seeded), or a tensor
   broadcastable to [C, H, W].
4. Score: the target's logit (``score="logit"``) or softmax probability (``"prob"``).
5. AOPC = (1/K) * sum_{k=1..K} (score_0 - score_k) -- the mean over the K perturbation steps,
   step 0 NOT included (Samek et al. divide by K+1 and include the k=0 term, which is zero; that
   equals this value times K/(K+1); :func:`aopc` offers ``include_step0=True`` for it).

Batching: all K+1 perturbed copies of an image are built as ``where(rank < n_k, baseline, x)``
from a per-pixel region-rank map and evaluated in chunks of ``batch_size`` -- ceil((K+1)/B)
forward calls per order instead of K+1. :func:`region_perturbation_naive` is the straightforward
one-forward-per-step loop, kept for the benchmark and to test that both agree (max difference
~1e-7).

Speed on the CPU (``benchmarks/bench_evaluation.py``, shared 2-core machine, 1 torch thread,
medians of 3): a CNN forward pass on the CPU is compute-bound, so its cost per image does not
drop with the batch size (small CNN at 224 px: 17-19 ms of user time per image for batches of 1
to 32). What made large chunks SLOWER than the naive loop (batch 32: 0.57x, batch 101: 0.51x at
224 px) is memory allocation, not the batching code: a chunk's activations (32 channels x 224 x
224 x 4 B = 6.4 MB per image, 205 MB for 32 images) are above glibc's mmap threshold, so every
forward maps fresh pages and the kernel faults and zeroes them (measured: 4,300 minor page faults
and 4.8 ms of system time per image at batch 1, 9,800 faults and 15.6 ms at batch 32; with
``MALLOC_MMAP_THRESHOLD_`` raised, zero faults and the same ~18 ms per image at every batch size).
The perturbed copies themselves are cheap (one ``where`` per chunk; nothing is recomputed per
step). Hence the CPU default chunk is small -- at most ``CPU_CHUNK_PIXELS`` input pixels per chunk
(batch 7 at 96 px, 1 at 224 px) -- which is as fast as the naive loop at 224 px and ~1.1x faster at
96 px; on an accelerator batching pays off (one image leaves it idle) and the default is 32.
A second torch thread that has to wait for a core busy with another job makes every op
several times slower, most of all for many small ops (one-image forwards): with 2 threads on the
same loaded machine one MoRF curve (100 steps) took 7.4 s naive and 5.4-8.0 s batched at 224 px
(batching then helps: fewer synchronisations), against 1.7 s naive / 1.7 s default with 1 thread;
on a loaded machine ``torch.set_num_threads(1)`` matters far more than the batch size. On the same
machine when quiet, 2 threads: naive 0.91 s, default 0.95 s, batch 32 1.67 s at 224 px; naive
0.29 s, default (7) 0.20 s at 96 px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .progress import tick

ORDERS = ("morf", "lerf", "random")
BASELINES = ("mean", "blur", "zeros", "noise")
TIES = ("random", "raster")


@dataclass
class PerturbationCurve:
    order: str
    scores: np.ndarray         # [K+1]: score after 0..K steps
    fractions: np.ndarray      # [K+1]: fraction of the image's pixels replaced after each step
    aopc: float
    settings: dict = field(default_factory=dict)

    def as_row(self) -> dict:
        return {"order": self.order, "aopc": self.aopc, "score_0": float(self.scores[0]),
                "score_K": float(self.scores[-1]), "steps": len(self.scores) - 1,
                "scores": self.scores.tolist(), **self.settings}


def aopc(scores, include_step0: bool = False) -> float:
    """Mean over steps k=1..K of (score_0 - score_k); ``include_step0`` divides by K+1 (Samek)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size < 2:
        return float("nan")
    drops = s[0] - s[1:]
    return float(drops.sum() / (len(drops) + (1 if include_step0 else 0)))


def _relevance_2d(relevance, h, w) -> torch.Tensor:
    r = torch.as_tensor(relevance).detach().to("cpu", torch.float64)
    while r.dim() > 3 and r.shape[0] == 1:
        r = r[0]
    if r.dim() == 3:
        r = r.sum(0)
    if r.dim() != 2:
        raise ValueError(f"relevance must be [H, W] or [C, H, W], got {tuple(r.shape)}")
    if tuple(r.shape) != (h, w):
        r = F.interpolate(r[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return r


def patch_scores(relevance, height: int, width: int, patch: int) -> torch.Tensor:
    """Relevance summed per region: [ceil(H/patch), ceil(W/patch)] (float64)."""
    r = _relevance_2d(relevance, height, width)
    gh, gw = math.ceil(height / patch), math.ceil(width / patch)
    pad = F.pad(r, (0, gw * patch - width, 0, gh * patch - height))
    return pad.reshape(gh, patch, gw, patch).sum(dim=(1, 3))


def patch_order(relevance, height: int, width: int, patch: int, order: str, seed: int = 0,
                ties: str = "random") -> torch.Tensor:
    """Region indices (raster index into the region grid) in perturbation order."""
    s = patch_scores(relevance, height, width, patch).reshape(-1)
    if order == "random":
        g = torch.Generator().manual_seed(int(seed))
        return torch.randperm(s.numel(), generator=g)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    key = -s if order == "morf" else s
    if ties == "raster":
        return torch.sort(key, stable=True).indices
    if ties != "random":
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    perm = torch.randperm(s.numel(), generator=torch.Generator().manual_seed(int(seed) + 1))
    return perm[torch.sort(key[perm], stable=True).indices]


def tie_share(relevance, height: int, width: int, patch: int) -> float:
    """Fraction of regions whose (summed) score equals another region's."""
    s = patch_scores(relevance, height, width, patch).reshape(-1)
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    return float((counts[inverse] > 1).double().mean())


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    rad = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-rad, rad + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    xx = F.pad(x[None], (rad, rad, rad, rad), mode="replicate")
    xx = F.conv2d(xx, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    xx = F.conv2d(xx, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return xx[0]


def make_baseline(x: torch.Tensor, baseline="mean", *, patch: int = 8, blur_sigma: Optional[float] = None,
                  seed: int = 0) -> torch.Tensor:
    """The replacement image [C, H, W] a perturbation step copies from."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x.device, x.dtype).expand_as(x).clone()
    if baseline == "zeros":
        return torch.zeros_like(x)
    if baseline == "mean":
        return x.mean(dim=(1, 2), keepdim=True).expand_as(x).clone()
    if baseline == "blur":
        return _gaussian_blur(x, blur_sigma if blur_sigma else max(patch / 2.0, 0.5))
    if baseline == "noise":
        g = torch.Generator().manual_seed(int(seed) + 7919)
        z = torch.randn(x.shape, generator=g, dtype=torch.float32).to(x.device, x.dtype)
        mean = x.mean(dim=(1, 2), keepdim=True)
        std = x.std(dim=(1, 2), keepdim=True)
        return mean + std * z
    raise ValueError(f"baseline must be one of {BASELINES} or a tensor, got {baseline!r}")


#: CPU default: at most this many input pixels per forward chunk (see the module doc).
CPU_CHUNK_PIXELS = 1 << 16


def default_batch_size(x: torch.Tensor) -> int:
    """Perturbed copies per forward call: 32 on an accelerator; on the CPU as many as fit in
    ``CPU_CHUNK_PIXELS`` input pixels, between 1 and 8 (7 at 96 px, 1 at 224 px)."""
    if x.device.type != "cpu":
        return 32
    return max(1, min(8, CPU_CHUNK_PIXELS // max(1, x.shape[-1] * x.shape[-2])))


def region_rank_map(order_idx: torch.Tensor, height, width, patch, device) -> torch.Tensor:
    """Per-pixel position of its region in the order: [H, W] long."""
    gh, gw = math.ceil(height / patch), math.ceil(width / patch)
    rank = torch.empty(gh * gw, dtype=torch.long)
    rank[order_idx] = torch.arange(gh * gw)
    grid = rank.view(gh, gw).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    return grid[:height, :width].to(device)


def _score(logits: torch.Tensor, target: int, score) -> torch.Tensor:
    if callable(score):
        return score(logits, target)
    if score == "logit":
        return logits[:, target]
    if score == "prob":
        return torch.softmax(logits.double(), dim=1)[:, target]
    raise ValueError(f"score must be 'logit', 'prob' or a callable, got {score!r}")


def _prepare(x, relevance, patch, steps, patches_per_step):
    x = torch.as_tensor(x)
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3:
        raise ValueError(f"image must be [C, H, W] or [1, C, H, W], got {tuple(x.shape)}")
    if patch < 1 or patches_per_step < 1:
        raise ValueError("patch and patches_per_step must be >= 1")
    _, h, w = x.shape
    n_regions = math.ceil(h / patch) * math.ceil(w / patch)
    max_steps = math.ceil(n_regions / patches_per_step)
    k = max_steps if steps is None else min(int(steps), max_steps)
    if k < 1:
        raise ValueError("steps must be >= 1")
    return x, h, w, n_regions, k


def perturbed_fractions(order_idx, h, w, patch, k, pps) -> np.ndarray:
    """Share of the image's pixels perturbed after each of the ``k`` steps (``k + 1`` values from 0)."""
    areas = torch.ones(h, w, dtype=torch.float64)
    per_region = patch_scores(areas, h, w, patch).reshape(-1)[order_idx]
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), per_region.cumsum(0)])
    idx = torch.clamp(torch.arange(k + 1) * pps, max=len(per_region))
    return (cum[idx] / (h * w)).numpy()


@torch.no_grad()
def region_perturbation(model: Callable, x, relevance, target: int, *, order: str = "morf",
                        patch: int = 8, steps: Optional[int] = 100, patches_per_step: int = 1,
                        baseline="mean", blur_sigma: Optional[float] = None, seed: int = 0,
                        batch_size: Optional[int] = None, score="logit", ties: str = "random") -> PerturbationCurve:
    """One perturbation curve, batched. ``model``: callable [N, C, H, W] -> logits [N, classes]
    (a ``torch.nn.Module`` in eval mode, or e.g. ``lambda x: clrp.engine.forward(m, x)``).
    ``steps=None`` perturbs until every region is replaced. ``batch_size=None``: 32 perturbed
    copies per forward call on an accelerator, :func:`default_batch_size` on the CPU (1 to 8,
    by image size). See the module doc for details."""
    x, h, w, n_regions, k = _prepare(x, relevance, patch, steps, patches_per_step)
    if batch_size is None:
        batch_size = default_batch_size(x)
    batch_size = max(1, int(batch_size))
    order_idx = patch_order(relevance, h, w, patch, order, seed, ties)
    base = make_baseline(x, baseline, patch=patch, blur_sigma=blur_sigma, seed=seed)
    rank = region_rank_map(order_idx, h, w, patch, x.device)
    counts = torch.clamp(torch.arange(k + 1, device=x.device) * patches_per_step, max=n_regions)
    scores = []
    for a in range(0, k + 1, batch_size):
        c = counts[a:a + batch_size]
        mask = rank[None] < c[:, None, None]                   # [B, H, W]
        batch = torch.where(mask[:, None], base[None], x[None])
        scores.append(_score(model(batch), target, score).detach().to("cpu", torch.float64))
        tick("perturbation steps", len(c))
    s = torch.cat(scores).numpy()
    return PerturbationCurve(order, s, perturbed_fractions(order_idx, h, w, patch, k, patches_per_step), aopc(s),
                             _settings(patch, patches_per_step, baseline, score, seed, ties,
                                       tie_share(relevance, h, w, patch)))


@torch.no_grad()
def region_perturbation_naive(model: Callable, x, relevance, target: int, *, order: str = "morf",
                              patch: int = 8, steps: Optional[int] = 100, patches_per_step: int = 1,
                              baseline="mean", blur_sigma: Optional[float] = None, seed: int = 0,
                              score="logit", ties: str = "random") -> PerturbationCurve:
    """Reference implementation: one forward pass per step, regions copied one at a time.
    Only for the benchmark and the equality test -- use :func:`region_perturbation`."""
    x, h, w, n_regions, k = _prepare(x, relevance, patch, steps, patches_per_step)
    order_idx = patch_order(relevance, h, w, patch, order, seed, ties)
    base = make_baseline(x, baseline, patch=patch, blur_sigma=blur_sigma, seed=seed)
    gw = math.ceil(w / patch)
    cur = x.clone()
    scores = [float(_score(model(cur[None]), target, score)[0])]
    done = 0
    for _ in range(k):
        for _j in range(patches_per_step):
            if done >= n_regions:
                break
            r, c = divmod(int(order_idx[done]), gw)
            ys, xs = slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch)
            cur[:, ys, xs] = base[:, ys, xs]
            done += 1
        scores.append(float(_score(model(cur[None]), target, score)[0]))
    s = np.asarray(scores, dtype=np.float64)
    return PerturbationCurve(order, s, perturbed_fractions(order_idx, h, w, patch, k, patches_per_step), aopc(s),
                             _settings(patch, patches_per_step, baseline, score, seed, ties,
                                       tie_share(relevance, h, w, patch)))


def _settings(patch, pps, baseline, score, seed, ties, share):
    return {"patch": patch, "patches_per_step": pps,
            "baseline": baseline if isinstance(baseline, str) else "custom",
            "score": score if isinstance(score, str) else "custom", "seed": seed, "ties": ties, "tie_share": share}


def perturbation_curves(model: Callable, x, relevance, target: int, *, orders: Sequence[str] = ORDERS,
                        **options) -> dict:
    """``{order: PerturbationCurve}`` for one image (options as in :func:`region_perturbation`)."""
    return {o: region_perturbation(model, x, relevance, target, order=o, **options) for o in orders}


def perturbation_rows(image_id, method: str, target: int, curves: dict) -> list:
    """Flat result rows (one per order) for a runner to append incrementally."""
    rows = []
    for o, c in curves.items():
        r = c.as_row()
        r.update(image_id=str(image_id), method=method, target=int(target))
        rows.append(r)
    return rows


def aopc_summary(rows):
    """Mean AOPC (and standard error) per (method, order), and the mean curve per (method, order).

    Returns ``(table, mean_curves)``: table indexed by method with columns per order
    (``aopc_morf``, ``aopc_lerf``, ``aopc_random``, ``n``); mean_curves: {(method, order): array}.
    Curves of different lengths are averaged over the common prefix.
    """
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(), {}
    agg = df.groupby(["method", "order"])["aopc"].agg(["mean", "sem", "count"])
    table = agg["mean"].unstack("order").add_prefix("aopc_")
    sem = agg["sem"].unstack("order").add_prefix("sem_")
    table = table.join(sem)
    if "tie_share" in df:  # of the MoRF/LeRF orders (a random order has no ties to break)
        ranked = df[df["order"] != "random"]
        table["tie_share"] = ranked.groupby("method")["tie_share"].mean()
    table["n"] = df.groupby("method")["image_id"].nunique()
    curves = {}
    for (m, o), g in df.groupby(["method", "order"]):
        arrs = [np.asarray(s, dtype=np.float64) for s in g["scores"]]
        n = min(len(a) for a in arrs)
        curves[(m, o)] = np.mean([a[:n] for a in arrs], axis=0)
    return table, curves


# ---------------------------------------------------------------------------------------------
# The protocol plug-in (see clrp.evaluation.protocol)

from .protocol import Chart, Protocol, register_protocol  # noqa: E402


@register_protocol
class RegionPerturbation(Protocol):
    name, title, page = "perturbation", "Region perturbation (MoRF / LeRF, AOPC)", "ablation"
    built_in = True
    description = "remove the most (MoRF) or least (LeRF) relevant patches first and follow the target score"

    @dataclass
    class Options:
        patch: int = 8  # region size in input pixels
        steps: Optional[int] = 100  # perturbation steps (None: until every region is replaced)
        patches_per_step: int = 1
        baseline: str = "mean"  # mean | blur | zeros | noise
        orders: tuple = ORDERS
        perturbation_batch: Optional[int] = None  # perturbed copies per forward (None: automatic)
        score: str = "logit"  # logit | prob
        ties: str = "random"  # order of regions with equal scores: random (seeded) | raster

    def validate(self, o, run):
        from ..errors import ClrpError

        if o.baseline not in BASELINES:
            raise ClrpError(f"baseline must be one of {', '.join(BASELINES)}, got {o.baseline!r}")
        bad = [x for x in o.orders if x not in ORDERS]
        if bad or not o.orders:
            raise ClrpError(f"orders must be among {', '.join(ORDERS)}, got {list(o.orders)}")
        if int(o.patch) < 1 or int(o.patches_per_step) < 1 or (o.steps is not None and int(o.steps) < 1):
            raise ClrpError("patch, patches_per_step and steps must be >= 1")
        if o.score not in ("logit", "prob"):
            raise ClrpError(f"score must be 'logit' or 'prob', got {o.score!r}")
        if o.ties not in TIES:
            raise ClrpError(f"ties must be one of {', '.join(TIES)}, got {o.ties!r}")

    def rows(self, batch, o):
        out = []
        for i, plist in batch.pairs_of().items():
            for k, c, t in plist:
                for m in batch.run.methods:
                    curves = perturbation_curves(
                        batch.forward, batch.inputs[i][0], batch.maps[m][k], t, orders=o.orders, patch=o.patch,
                        steps=o.steps, patches_per_step=o.patches_per_step, baseline=o.baseline,
                        seed=batch.image_seed(i), batch_size=o.perturbation_batch, score=o.score, ties=o.ties)
                    for row in perturbation_rows(batch.samples[i].image_id, m, t, curves):
                        row["class_name"] = c
                        out.append(row)
        return out

    def summary(self, df, options=None):
        return aopc_summary(df.to_dict("records"))[0]

    def charts(self, summary, rows=None):
        import pandas as pd

        charts = []
        if rows is not None and len(rows):
            _, curves = aopc_summary(rows.to_dict("records"))
            long = pd.DataFrame([{"method": m, "order": o.upper(), "step": k, "score": float(v)}
                                 for (m, o), c in sorted(curves.items()) for k, v in enumerate(c)])
            charts.append(Chart("line", "Region perturbation: MoRF / LeRF curves", long, x="step", y="score",
                                series="method", dash="order", x_title="perturbation step",
                                y_title="target score (mean)"))
        t = summary.reset_index()
        cols = [c for c in t.columns if str(c).startswith("aopc_")]
        if cols:
            long = t.melt(id_vars=["method"], value_vars=cols, var_name="order", value_name="AOPC")
            long["order"] = long["order"].str[5:].str.upper()
            charts.append(Chart("bar", "AOPC (MoRF: higher = better, LeRF: lower = better)", long, x="method",
                                y="AOPC", series="order", y_title="AOPC"))
        charts.append(Chart("table", "AOPC", t))
        return charts
