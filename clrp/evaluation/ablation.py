"""Feature ablation at a hidden layer (evaluation.md, "Ablation / perturbation" 2).

For a batch of images, their targets and a layer: rank the layer's channels (units) by their
relevance for the target (``clrp.layer_relevance``, [N, K], or relevances passed in), zero the
top-k channels through ``clrp.engine.forward(model, x, ablate={layer: mask})`` and measure

* ``target_drop`` = y_t(original) - y_t(ablated)                      (logits),
* ``others_drop`` = mean_{c != t} y_c(original) - mean_{c != t} y_c(ablated),
* ``gap`` = target_drop - others_drop (a class-discriminative ranking makes it large),

against ``random`` ablation of k channels (seeded; averaged over ``random_repeats`` draws, with
the per-draw spread in ``target_drop_std``). Ranking ties keep channel order (stable sort). k is
capped at the number of channels. One forward pass per (k, ranking or random draw) for the whole
batch. The mask has shape [N, K] for a layer with [N, K] output and [N, K, 1, 1] for a
convolutional [N, K, H, W] output (the layer's output rank is probed once per call).

Rows are dicts (one per image, k, ranking), so a runner can compute them per batch and append.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .progress import tick

DEFAULT_KS = (1, 2, 4, 8, 16, 32)


def _targets(targets, n, device) -> torch.Tensor:
    t = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1 and n > 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{t.numel()} targets for {n} inputs")
    return t


def _layer_ndim(model, x, layer) -> int:
    from .. import engine

    plan = engine.plan_for(model, x)
    return len(plan.graph.nodes[plan.layer_index(layer)].shape) + 1


def _drops(base: torch.Tensor, abl: torch.Tensor, t: torch.Tensor):
    n, c = base.shape
    idx = torch.arange(n, device=base.device)
    td = base[idx, t] - abl[idx, t]
    other = torch.ones(n, c, dtype=torch.bool, device=base.device)
    other[idx, t] = False
    denom = max(c - 1, 1)
    om_b = (base * other).sum(1) / denom
    om_a = (abl * other).sum(1) / denom
    return td.double().cpu(), (om_b - om_a).double().cpu()


@torch.no_grad()
def feature_ablation(model, inputs: torch.Tensor, targets, layer: str, *,
                     relevances: Optional[torch.Tensor] = None, ks: Sequence[int] = DEFAULT_KS,
                     method: str = "clrp2", rules="paper", random_repeats: int = 5, seed: int = 0,
                     image_ids: Optional[Sequence] = None, ranking_name: Optional[str] = None,
                     **relevance_options) -> list:
    """Rows ``{image_id, target, layer, ranking, k, target_drop, others_drop, gap, target_logit,
    others_mean, n_channels}`` for the relevance ranking (``ranking`` = ``ranking_name`` or
    ``method``) and for ``random``. ``relevances`` [N, K] skips the ``clrp.layer_relevance``
    call (then ``method``/``rules``/options are unused)."""
    from .. import engine

    x = inputs
    n = x.shape[0]
    t = _targets(targets, n, x.device)
    if relevances is None:
        from ..methods import layer_relevance

        with torch.enable_grad():
            relevances = layer_relevance(model, x, t, layer, method=method, rules=rules, **relevance_options)
    rel = torch.as_tensor(relevances).detach()
    if rel.ndim > 2:
        rel = rel.sum(dim=tuple(range(2, rel.ndim)))
    if rel.ndim != 2 or rel.shape[0] != n:
        raise ValueError(f"relevances must be [N, K] with N={n}, got {tuple(rel.shape)}")
    n_ch = rel.shape[1]
    ndim = _layer_ndim(model, x, layer)
    shape_tail = (1,) * max(ndim - 2, 0)
    base = engine.forward(model, x)
    ids = [str(i) for i in (image_ids if image_ids is not None else range(n))]
    if len(ids) != n:
        raise ValueError("image_ids must have one id per input")
    ranked = torch.sort(-rel.double().cpu(), dim=1, stable=True).indices      # [N, K] most relevant first
    gen = torch.Generator().manual_seed(int(seed))
    draws = [torch.stack([torch.randperm(n_ch, generator=gen) for _ in range(n)])
             for _ in range(max(1, int(random_repeats)))]
    name = ranking_name or method
    others_mean_base = _drops(base, base * 0, t)[1]  # mean of other logits (original)
    rows = []

    def run(order: torch.Tensor, k: int):
        mask = torch.ones(n, n_ch, dtype=x.dtype)
        mask.scatter_(1, order[:, :k], 0.0)
        mask = mask.reshape(n, n_ch, *shape_tail).to(x.device)
        return _drops(base, engine.forward(model, x, ablate={layer: mask}), t)

    for k in sorted({min(int(k), n_ch) for k in ks if int(k) > 0}):
        td, od = run(ranked, k)
        tds, ods = zip(*(run(d, k) for d in draws))
        tick("ablations", 1 + len(draws))
        td_r, od_r = torch.stack(tds), torch.stack(ods)
        for i in range(n):
            common = {"image_id": ids[i], "target": int(t[i]), "layer": layer, "k": k,
                      "n_channels": n_ch, "target_logit": float(base[i, t[i]]),
                      "others_mean": float(others_mean_base[i])}
            rows.append({**common, "ranking": name, "target_drop": float(td[i]),
                         "others_drop": float(od[i]), "gap": float(td[i] - od[i]),
                         "target_drop_std": 0.0, "repeats": 1})
            rows.append({**common, "ranking": "random", "target_drop": float(td_r[:, i].mean()),
                         "others_drop": float(od_r[:, i].mean()),
                         "gap": float((td_r[:, i] - od_r[:, i]).mean()),
                         "target_drop_std": float(td_r[:, i].std(unbiased=False)),
                         "repeats": len(draws)})
    return rows


def ablation_summary(rows):
    """Mean drops per (ranking, k) over images: columns target_drop, others_drop, gap, n."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["target_drop", "others_drop", "gap", "n"])
    g = df.groupby(["ranking", "k"], sort=True)
    out = g[["target_drop", "others_drop", "gap"]].mean()
    out["n"] = g.size()
    return out


# ---------------------------------------------------------------------------------------------
# The protocol plug-in (see clrp.evaluation.protocol)

from dataclasses import dataclass  # noqa: E402

from .protocol import Chart, Protocol, register_protocol  # noqa: E402


@register_protocol
class FeatureAblation(Protocol):
    name, title, page = "ablation", "Hidden-unit ablation", "ablation"
    built_in = True
    description = "zero the top-k units of a layer by relevance and compare the drop of the target with the others'"
    needs_maps = False

    @dataclass
    class Options:
        layer: Optional[str] = None  # by module path; default: the engine's last feature map
        ks: tuple = DEFAULT_KS  # numbers of top units zeroed
        random_repeats: int = 5
        ablation_method: Optional[str] = None  # default: every LRP-family method of the run

    def validate(self, o, run):
        from ..errors import ClrpError

        if not o.ks or any(int(k) < 1 for k in o.ks):
            raise ClrpError(f"ks must be positive integers, got {list(o.ks)}")
        if int(o.random_repeats) < 1:
            raise ClrpError("random_repeats must be >= 1")

    def resolve(self, o, model, preprocessing, run):
        import dataclasses

        from .. import engine

        if o.layer is None:
            o = dataclasses.replace(o, layer=engine.last_feature_layer(model, preprocessing.example_input()))
        return o

    def rows(self, batch, o):
        from ..method_registry import with_layer_relevance

        if not batch.pairs:
            return []
        methods = ([o.ablation_method] if o.ablation_method else
                   [m for m in batch.run.methods if m in with_layer_relevance()])
        x = torch.cat([batch.inputs[i] for i, _, _ in batch.pairs], 0)
        targets = [t for _, _, t in batch.pairs]
        ids = [batch.samples[i].image_id for i, _, _ in batch.pairs]
        out = []
        for mi, m in enumerate(methods):
            rows = feature_ablation(batch.model, x, targets, o.layer, method=m, rules=batch.run.rules, ks=o.ks,
                                    random_repeats=o.random_repeats, seed=batch.run.seed, image_ids=ids,
                                    **batch.method_options(m))
            for row in rows:
                if mi > 0 and row["ranking"] == "random":
                    continue  # the random baseline does not depend on the method: keep it once
                row["class_name"] = batch.class_names[row["target"]]
                out.append(row)
        return out

    def summary(self, df, options=None):
        return ablation_summary(df)

    def charts(self, summary, rows=None):
        import pandas as pd

        a = summary.reset_index()
        long = pd.concat([a.assign(drop=a["target_drop"], which="target"),
                          a.assign(drop=a["others_drop"], which="other classes")])
        return [Chart("line", "Hidden-unit ablation: top-k by relevance vs random", long, x="k", y="drop",
                      series="ranking", dash="which", x_title="units ablated (k)", y_title="logit drop (mean)"),
                Chart("table", "Hidden-unit ablation", a)]
