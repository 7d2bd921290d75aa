"""explain(), hidden-neuron explanations, layer relevances and the built-in methods (their records are
:class:`clrp.method_registry.Method`, in the registry that explain(), the CLI and the dashboard read).

Every method is a seed plus a walk over the engine's one propagation mechanism: LRP-family
methods differ only in their output-layer seed (and CLRP's dual), gradient-family methods only
in how ReLU-like ops pass the signal back. The LRP family needs every node between the input and
the output to have a relevance rule; the gradient family works on any model autograd can
differentiate (on the traced graph, or on the model itself when it cannot be traced).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from . import engine, precision
from .engine import DECONVNET, GRADIENT, GUIDED, gradients, layer_step, plan_for, propagate, run_forward
from .engine.heads import output_heads
from .engine.trace import select_output
from .errors import ClrpError, InvalidTarget, UnsupportedModel
from .explain_inputs import (batch_targets, check_batch_first, check_channel, check_inputs_untraced, check_targets,
                             position_index, resolve_box)
from .method_registry import (MAP_KINDS, METHOD_LABELS, METHODS, REGISTRY, Method, Option, integer, lookup,
                              map_kind, non_negative, register_method, resolve_options, with_layer_relevance)
from .rules import Epsilon, Gamma, GateConstant, Gradient, resolve_composite

__all__ = ["explain", "explain_neuron", "layer_relevance", "METHODS", "Method", "Option", "REGISTRY", "register_method",
           "MAP_KINDS", "METHOD_LABELS", "map_kind", "ExplanationInfo", "VANISHING"]


@dataclass
class _Ctx:
    """What a method's ``run`` gets (see :class:`clrp.method_registry.Method`)."""

    plan: engine.Plan | None  # None: the model could not be traced (autograd-only methods)
    model: torch.nn.Module
    x: torch.Tensor
    targets: torch.Tensor
    rules: object
    box: object
    opts: dict
    info: dict = field(default_factory=dict)  # what the run measured (ExplanationInfo's fields)
    output: object = None  # which model output is explained (see explain)


#: LRP with a conserving preset passes on the seed: |sum of the input relevance| / |seed| below this
#: means the stabilisers absorbed it (a network with tiny activations) or a non-conserving rule did
#: (AttnLRP's softmax on near-uniform attention): a warning, and the ratio in the ExplanationInfo.
#: Non-ReLU activations (identity rule), pools and biases' shares move it a little, not 10x.
VANISHING = 0.1


@dataclass(frozen=True)
class ExplanationInfo:
    """What ``explain(..., return_info=True)`` reports besides the map."""

    method: str
    rules: str | None  # the preset's description (LRP family)
    #: per sample |sum of the input relevance| / |seed| (``lrp`` only; NaN where the seed is 0);
    #: 1 for a conserving preset on a ReLU network
    conservation: torch.Tensor | None
    all_zero: torch.Tensor  # per sample: the map is zero everywhere
    warnings: tuple = ()

    @property
    def vanished(self) -> bool:
        """Some sample's relevance vanished (all zero, or below VANISHING with a conserving preset)."""
        return bool(self.warnings)


# ----------------------------------------------------------------------------------------------
# Public entry points

def explain(model, inputs, targets, method: str = "clrp2", *, rules="paper", output=None, return_info: bool = False,
            **options):
    """Relevance of every input element for each sample's target class.

    Returns a float tensor shaped like ``inputs`` [N, C, H, W] on the inputs' device (float32 for a
    float16/bfloat16 model, which is explained in float32: see ``clrp.precision``). ``targets`` is
    an int, a sequence or a tensor with one class per sample; a single image with K targets is
    explained K times (one forward pass). See ``METHODS`` for the methods and their options.
    ``return_info=True`` returns ``(map, ExplanationInfo)``: the conservation ratio of ``lrp`` and
    which maps vanished (also said by a ``ClrpWarning``, once per model).
    ``output`` says which output of a model returning a tuple or dict holds the logits: a key
    (``"out"``), an index (``0``) or a function of the output (``lambda out: out.logits``); a model
    returning several tensors without it is refused, naming them.
    """
    spec = lookup(method)
    opts = resolve_options(spec, options)
    box = opts.pop("box", None)
    model, inputs = precision.for_explanation(model, inputs)  # float16/bfloat16: computed in float32
    try:
        plan = plan_for(model, inputs, output=output)
    except UnsupportedModel:
        if not spec.autograd_only:
            raise
        plan = None
    if plan is None:
        if model.training:
            raise ClrpError(f"{type(model).__name__} could not be traced and is in training mode: call model.eval() "
                            "before explaining it (its own forward would update BatchNorm statistics)")
        x = check_inputs_untraced(model, inputs)
    else:
        x = engine.check_inputs(plan, inputs)
    rows = x.shape[0]
    x, t = batch_targets(x, targets)
    composite = resolve_composite(rules)
    ctx = _Ctx(plan, model, x, t, composite, None, opts, output=output)
    if spec.family == "relevance":
        plan.require_lrp()
        ctx.box = resolve_box(box, plan, x, composite)
    R = _at_batch_size(ctx, rows, spec.run)
    info = _check_result(ctx, method, spec, composite, R)
    return (R, info) if return_info else R


def _check_result(ctx, method, spec, composite, R) -> ExplanationInfo:
    """Say when relevance vanished: an all-zero map (any method), or for LRP a conservation ratio below
    VANISHING (an absolute stabiliser absorbing tiny activations, AttnLRP's softmax rule on
    near-uniform attention, biases taking nearly all of it)."""
    all_zero = R.detach().flatten(1).abs().amax(1) == 0
    ratio = ctx.info.get("conservation")
    relevance = spec.family == "relevance"
    notes = []
    fix = (" If the network's activations are tiny, the stabilisers absorbed it: rules={'preset': ..., "
           "'stabilizer': 'relative'} scales them with each layer's output." if relevance else "")
    if bool(all_zero.any()):
        rows = all_zero.nonzero().flatten().tolist()
        notes.append(f"the {method} map of sample(s) {rows[:10]} is zero everywhere.{fix}")
    if relevance and ratio is not None:
        low = (ratio < VANISHING) & ~all_zero
        if bool(low.any()):
            rows = low.nonzero().flatten().tolist()
            why = ("a conserving preset passes on ~1" if composite.conserving else
                   "this preset does not conserve: biases take their shares")
            if not isinstance(composite.product, GateConstant) and ctx.plan is not None and any(
                    n.op_name in ("softmax", "_softmax") for n in ctx.plan.graph.nodes):
                fix += (" Where attention is near-uniform, AttnLRP's softmax rule passes almost nothing on: "
                        "rules='cp_lrp' keeps the attention weights constant.")
            notes.append(f"only {float(ratio[low].min()):.3g} of the seed's relevance reaches the input (sample(s) "
                         f"{rows[:10]}; {why}).{fix}")
    if notes and ctx.opts.get("condition") is None:  # a conditioned map is a part: zero where nothing flows
        engine.warn_once(ctx.model, f"vanishing:{method}", f"{type(ctx.model).__name__}: " + " ".join(notes))
    return ExplanationInfo(method, composite.description if relevance else None, ratio, all_zero.cpu(), tuple(notes))


def _at_batch_size(ctx: _Ctx, rows: int, run):
    """``run(ctx)``, with the model seeing batches of the size it was given (``rows``) when its
    forward depends on the batch size: several targets of one image are then explained one by one."""
    if ctx.plan is None or ctx.x.shape[0] == rows or not ctx.plan.graph.batch_guards.constrained:
        return run(ctx)
    parts, ratios = [], []
    for i in range(0, ctx.x.shape[0], rows):
        part = replace(ctx, x=ctx.x[i:i + rows], targets=ctx.targets[i:i + rows], info={})
        parts.append(run(part))
        ratios.append(part.info.get("conservation"))
    if all(r is not None for r in ratios):
        ctx.info["conservation"] = torch.cat(ratios)
    return torch.cat(parts)


def layer_relevance(model, inputs, targets, layer: str, method: str = "lrp", *, rules="paper",
                    spatial: bool = False, output=None, **options) -> torch.Tensor:
    """Relevance of each channel (unit) of ``layer`` for the target: [N, K] (or the full map with
    ``spatial=True``). Contrastive methods give the signed difference target - dual. In a graph
    with skip connections this is the relevance that reaches ``layer`` (what bypasses it is not
    counted); at a block output it is all of it."""
    spec = REGISTRY.get(method)
    if spec is None or spec.layer is None:
        raise ClrpError(f"layer relevance needs an LRP-family method ({', '.join(with_layer_relevance())})")
    model, inputs = precision.for_explanation(model, inputs)
    plan = plan_for(model, inputs, output=output)
    x = engine.check_inputs(plan, inputs)
    rows = x.shape[0]
    x, t = batch_targets(x, targets)
    opts = resolve_options(spec, options)
    composite = resolve_composite(rules)
    ctx = _Ctx(plan, model, x, t, composite, None, opts, output=output)
    box = opts.pop("box", None)
    plan.require_lrp()
    ctx.box = resolve_box(box, plan, x, composite)
    idx = plan.layer_index(layer)
    check_batch_first(plan, idx, layer)
    R = _at_batch_size(ctx, rows, lambda c: spec.layer(c, idx))
    if spatial or R.ndim == 2:
        return R
    return R.sum(dim=tuple(range(2, R.ndim)))


def explain_neuron(model, inputs, layer: str, channel: int, *, position=None, contrast=None, rules="paper",
                   output: str = "clamp", box=None, model_output=None) -> torch.Tensor:
    """Explain the activation of ``channel`` (dimension 1) of ``layer`` (optionally at one spatial
    ``position``).

    ``contrast=None`` explains the neuron alone; ``"rest"`` subtracts the explanation of the layer's
    other channels and an int ``j`` that of channel j (the CLRP1 analogue: the dual carries the same
    total activation). ``output`` for contrasts: "clamp" (max(0, target - dual)) or "signed".
    ``model_output`` selects the output of a model returning a tuple or dict (``output=`` of explain).
    """
    if output not in ("clamp", "signed"):
        raise ClrpError("output must be 'clamp' or 'signed'")
    model, inputs = precision.for_explanation(model, inputs)
    plan = plan_for(model, inputs, output=model_output)
    x = engine.check_inputs(plan, inputs)
    idx = plan.layer_index(layer)
    check_batch_first(plan, idx, layer)
    plan.require_lrp(idx)
    fwd = run_forward(plan, x, stop=idx)
    A = fwd.value(idx)
    if A.ndim < 2:
        raise InvalidTarget(f"layer {layer!r} has no channels to explain")
    k = A.shape[1]
    check_channel(channel, k, layer)
    sel = torch.zeros_like(A)
    pos = position_index(position, A, layer)
    sel[(slice(None), channel, *pos)] = 1
    R = A * sel
    if contrast is not None:
        if isinstance(contrast, str) and contrast == "rest":
            other = torch.ones_like(A)
            other[:, channel] = 0
        elif isinstance(contrast, (int, np.integer)) and not isinstance(contrast, bool):
            check_channel(int(contrast), k, layer)
            if int(contrast) == channel:
                raise InvalidTarget("contrast channel must differ from the explained channel")
            other = torch.zeros_like(A)
            other[:, int(contrast)] = 1
        else:
            raise ClrpError("contrast must be None, 'rest' or a channel index")
        if pos:
            keep = torch.zeros_like(A)
            keep[(slice(None), slice(None), *pos)] = 1
            other = other * keep
        dual = A * other
        R = R - dual * _ratio(_total(R), _total(dual)).view(-1, *([1] * (A.ndim - 1)))
    composite = resolve_composite(rules)
    out = propagate(plan, fwd, {idx: R}, rules=plan.rules_for(composite), box=resolve_box(box, plan, x, composite))
    if contrast is not None and output == "clamp":
        out = out.clamp(min=0)
    return out


# ----------------------------------------------------------------------------------------------
# LRP family

def _relevance(ctx: _Ctx, kind: str, stop_at: int | None = None) -> torch.Tensor:
    plan, o = ctx.plan, ctx.opts
    g = plan.graph
    fwd = run_forward(plan, ctx.x)
    logits = fwd.logits
    if logits.ndim != 2:
        raise UnsupportedModel(f"the model's output has shape {tuple(logits.shape)}; expected logits [N, classes]")
    t = check_targets(ctx.targets, logits.shape[1])
    rules = plan.rules_for(ctx.rules)
    heads, several = output_heads(plan)  # several: why the logits are no sum of the heads (None: they are)
    heads = heads if several is None else [plan.output_layer] if plan.output_layer is not None else []
    for h in heads if ctx.rules.output is not None else ():  # the preset's output-layer rule
        node = g.nodes[h]
        rules = {**rules, h: ctx.rules.rule_for(node.names, node.module_type, node.op.rule_kind(node),
                                                h in plan.first_layers, is_output=True)}
    if stop_at is not None and heads and stop_at >= min(heads):
        raise InvalidTarget("choose a hidden layer (before the output layer) for layer relevance")
    condition = _condition(plan, fwd, o.get("condition"), min(heads) if heads else None)
    walk = dict(rules=rules, box=ctx.box, condition=condition, until=stop_at)

    n_cls = logits.shape[1]
    onehot = F.one_hot(t, n_cls).to(logits.dtype)
    y_t = logits.gather(1, t[:, None])
    if o.get("seed", "logit") == "abs_logit":
        y_t = y_t.abs()

    if kind == "lrp":
        R = propagate(plan, fwd, {g.output: onehot * y_t}, **walk)
        if stop_at is None and condition is None:
            seed = y_t.flatten().abs()
            total = R.flatten(1).sum(1).abs()
            ctx.info["conservation"] = torch.where(seed > 0, total / seed.clamp(min=torch.finfo(seed.dtype).tiny),
                                                   torch.full_like(seed, float("nan"))).cpu()
        return R
    if kind == "sglrp":
        p = logits.softmax(1)
        p_t = p.gather(1, t[:, None])
        return propagate(plan, fwd, {g.output: torch.where(onehot.bool(), p_t * (1 - p_t), -p_t * p)}, **walk)

    if several is not None or not heads:
        names = ", ".join(g.preferred_name(h) for h in output_heads(plan)[0])
        where = f"end in the layers {names}, and {several}" if names else "go through no conv or dense layer"
        raise UnsupportedModel(
            f"CLRP forms its dual at the output layer: one conv or dense layer every path to the logits goes "
            f"through, or several whose outputs the logits sum or average with constant positive weights (e.g. "
            f"DeiT's head and head_dist). The paths to the logits of {type(ctx.model).__name__} {where}. Explain one head's logits (a wrapper module returning them, or output=... if "
            "the model returns them apart), or use lrp or sglrp, which need no dual")
    contrast = o.get("contrast", "clamp")

    def tops(seed):  # the relevance of ``seed`` (at the logits) at each head's output
        return {h: seed if h == g.output else propagate(plan, fwd, {g.output: seed}, rules=rules, box=ctx.box, until=h)
                for h in heads}

    def below(top, negate=False):  # ... and at each head's input
        return {h: layer_step(plan, fwd, h, r, rules=rules, box=ctx.box, negate=negate) for h, r in top.items()}

    top_t = tops(onehot * y_t)
    low_t = below(top_t)
    if kind == "clrp1":
        if n_cls < 2:
            raise InvalidTarget("CLRP1 needs a model with at least two classes")
        others = 1 - onehot
        if o.get("dual", "uniform") == "uniform":
            weights = others / (n_cls - 1)
        else:  # abs_logits
            weights = logits.abs() * others
            weights = weights * _ratio(1.0, weights.sum(1)).view(-1, 1)
        # several heads: each gets the same dual, carrying its share of the target score
        low_d = below(tops(weights * y_t) if len(heads) == 1 else {h: r.gather(1, t[:, None]) * weights
                                                                    for h, r in top_t.items()})
    else:  # clrp2: the output layer with the target's weights negated, seeded with the target score
        for h in heads:
            if isinstance(rules[h], (Epsilon, Gradient, Gamma)):
                name = g.nodes[h].name
                raise ClrpError(
                    f"CLRP2 is identically zero when the output layer {name!r} uses the {rules[h].name} rule: "
                    f"negating the weights negates both numerator and denominator, so the dual equals the target. "
                    f"Use z+ or alpha-beta there, e.g. rules={{'preset': ..., {name!r}: 'zplus'}}")
        # The relevance at the output layer is non-zero for the target only, so negating every row
        # of the layer equals negating the target's row.
        low_d = below(top_t, negate=True)
    total_t, total_d = (sum(_total(r) for r in low.values()) for low in (low_t, low_d))
    seeds = {}
    for h in heads:
        if contrast == "reference":
            low = low_t[h] * _ratio(1.0, total_t).view(-1, *[1] * (low_t[h].ndim - 1)) - \
                low_d[h] * _ratio(1.0, total_d).view(-1, *[1] * (low_d[h].ndim - 1))
        else:
            low = low_t[h] - low_d[h]
        start = g.nodes[h].args[0].index
        seeds[start] = low if start not in seeds else seeds[start] + low
    R = propagate(plan, fwd, seeds, **walk)
    if stop_at is not None:
        return R
    if contrast == "clamp":
        R = R.clamp(min=0)
    elif contrast == "reference":
        peak = R.flatten(1).amax(1).view(-1, *[1] * (R.ndim - 1))
        R = torch.where(peak > 0, R / peak.clamp(min=torch.finfo(R.dtype).tiny), torch.zeros_like(R)).clamp(min=0)
    return R


def _total(R):
    return R.flatten(1).sum(1)


def _ratio(num, den):
    den = torch.as_tensor(den)
    safe = torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.zeros_like(den), num / safe)


def _condition(plan, fwd, condition, end):
    if condition is None:
        return None
    try:
        layer, channels = condition
    except (TypeError, ValueError):
        raise ClrpError("condition must be (layer_name, channels)") from None
    idx = plan.layer_index(layer)
    check_batch_first(plan, idx, layer)
    if end is not None and idx >= end:
        raise InvalidTarget("condition on a hidden layer, not the output layer")
    out = fwd.values[idx]
    channels = [channels] if isinstance(channels, (int, np.integer)) else list(channels)
    for c in channels:
        check_channel(c, out.shape[1], layer)
    mask = torch.zeros((1, out.shape[1], *[1] * (out.ndim - 2)), dtype=out.dtype, device=out.device)
    mask[0, channels] = 1
    return {idx: mask}


# ----------------------------------------------------------------------------------------------
# Gradient family

def _gradient(ctx: _Ctx, mode: str, x=None, targets=None) -> torch.Tensor:
    x = ctx.x if x is None else x
    targets = ctx.targets if targets is None else targets

    def seed(logits):
        t = check_targets(targets, logits.shape[1])
        return F.one_hot(t, logits.shape[1]).to(logits.dtype)

    if ctx.plan is None:  # untraceable model: autograd on the model itself
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = select_output(ctx.model(xg), ctx.output, type(ctx.model).__name__)
            (grad,) = torch.autograd.grad(logits, xg, seed(logits.detach()))
        return grad
    return gradients(_plan_for_rows(ctx.plan, ctx.model, x, ctx.output), x, seed, mode=mode)[0]


def _plan_for_rows(plan, model, x, output):
    """The plan valid for ``x``'s batch size (a model whose forward checks its batch size may need
    another trace than the one made for the inputs as given)."""
    if plan is None or plan.graph.batch_guards.rejects(x.shape[0]) is None:
        return plan
    return plan_for(model, x, output=output)


def _batched_gradients(ctx, points: torch.Tensor, weights, batch_size):
    """Sum_k weights[k] * grad(points[k]) for points [S, N, ...]; gradients taken in chunks."""
    s, n = points.shape[:2]
    flat = points.reshape(s * n, *points.shape[2:])
    targets = ctx.targets.repeat(s)
    w = torch.as_tensor(weights, dtype=points.dtype, device=points.device).repeat_interleave(n)
    total = torch.zeros((n, *points.shape[2:]), dtype=points.dtype, device=points.device)
    step = max(1, int(batch_size or 16 * n))
    if ctx.plan is not None and ctx.plan.graph.batch_guards.constrained:
        step = n  # the model's forward depends on the batch size: each point at the size given
    for i in range(0, s * n, step):
        g = _gradient(ctx, GRADIENT, flat[i:i + step], targets[i:i + step])
        g = g * w[i:i + step].view(-1, *[1] * (g.ndim - 1))
        idx = torch.arange(i, min(i + step, s * n), device=points.device) % n
        total.index_add_(0, idx, g)
    return total


def _integrated_gradients(ctx: _Ctx) -> torch.Tensor:
    o = ctx.opts
    x = ctx.x
    baseline = o["baseline"]
    baseline = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype,
                                                                           device=x.device).expand_as(x)
    steps = o["steps"]
    alphas, weights = _path_coefficients(o["integration"], steps)
    a = torch.as_tensor(alphas, dtype=x.dtype, device=x.device).view(-1, *[1] * x.ndim)
    points = baseline.unsqueeze(0) + a * (x - baseline).unsqueeze(0)
    return (x - baseline) * _batched_gradients(ctx, points, weights, o["batch_size"])


def _path_coefficients(method, n):
    """Alphas and step weights of the path integral (the same quadratures as captum)."""
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return (0.5 * (1 + nodes)).tolist(), (0.5 * w).tolist()
    if n < 2:
        raise ClrpError("integrated gradients needs at least 2 steps with a Riemann rule")
    if method == "riemann_trapezoid":
        w = [1 / n] * n
        w[0] /= 2
        w[-1] /= 2
        return torch.linspace(0, 1, n).tolist(), w
    alphas = {"riemann_left": torch.linspace(0, 1 - 1 / n, n), "riemann_right": torch.linspace(1 / n, 1, n),
              "riemann_middle": torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)}[method]
    return alphas.tolist(), [1 / n] * n


def _smoothgrad(ctx: _Ctx) -> torch.Tensor:
    o = ctx.opts
    x = ctx.x
    n = int(o["samples"])
    gen = torch.Generator(device="cpu").manual_seed(int(o["random_state"]))
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, *[1] * (x.ndim - 1))
    noise = torch.randn((n, *x.shape), generator=gen, dtype=x.dtype).to(x.device)
    points = x.unsqueeze(0) + noise * (float(o["noise"]) * span).unsqueeze(0)
    return _batched_gradients(ctx, points, [1 / n] * n, o["batch_size"])


def _gradcam(ctx: _Ctx) -> torch.Tensor:
    plan, o, x = ctx.plan, ctx.opts, ctx.x
    if o["layer"] is None:
        idx = plan.last_feature_map()
        if idx is None:
            raise ClrpError("Grad-CAM found no spatial feature map that every path goes through; pass layer=")
    else:
        idx = plan.layer_index(o["layer"])
        check_batch_first(plan, idx, o["layer"])
    t = ctx.targets
    _, g, fwd = gradients(plan, x, lambda logits: F.one_hot(check_targets(t, logits.shape[1]), logits.shape[1])
                          .to(logits.dtype), wrt=(idx,))
    A = fwd.values[idx].detach()
    if A.ndim != 4:
        raise ClrpError(f"Grad-CAM layer {plan.graph.nodes[idx].name!r} must output a feature map [N, K, h, w]; "
                        f"it has shape {tuple(A.shape)}")
    cam = (g.mean(dim=(2, 3), keepdim=True) * A).sum(1, keepdim=True)
    if o["relu"]:
        cam = cam.clamp(min=0)
    mode = o["interpolation"]
    cam = F.interpolate(cam, size=x.shape[2:], mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    # Spread over channels so that the channel sum (how heatmaps are drawn) is the CAM itself.
    return (cam / x.shape[1]).expand(-1, x.shape[1], -1, -1).contiguous()


# ----------------------------------------------------------------------------------------------
# The built-in methods' records

_SEED = Option("seed", "logit", "logit (signed, default) or |logit| as in the reference code",
               choices=("logit", "abs_logit"), control="Output seed")
_CONDITION = Option("condition", None, "(layer, channels): only the relevance that flows through these channels")
_BOX = Option("box", None, "zB bounds (low, high), scalars or one per input channel, or 'reference' "
                           "(default: ImageNet normalisation)")
_CONTRAST = Option("contrast", "clamp", "clamp: max(0, target - dual) as in the paper; signed: keep negative evidence "
                                        "(shown on a diverging scale); reference: the authors' code's "
                                        "normalise-then-subtract",
                   choices=("clamp", "signed", "reference"), control="CLRP output",
                   kinds={"reference": "normalised relevance"})
_DUAL = Option("dual", "uniform", "uniform: the paper's text; abs_logits: the reference code",
               choices=("uniform", "abs_logits"), control="CLRP1 dual")
_BATCH = Option("batch_size", None, "inputs per gradient call (default: 16 per sample)", check=integer(1, optional=True))

for _m in (
    Method("lrp", "LRP", "Layer-wise Relevance Propagation of the target logit (rule preset via `rules`)",
           "relevance", "relevance", lambda c: _relevance(c, "lrp"), (_SEED, _CONDITION, _BOX),
           layer=lambda c, i: _relevance(c, "lrp", stop_at=i)),
    Method("clrp1", "CLRP1", "Contrastive LRP, dual = all other classes (dual='uniform' as the paper, 'abs_logits' "
           "as its code)", "relevance", "relevance", lambda c: _relevance(c, "clrp1"),
           (_SEED, _CONDITION, _BOX, _CONTRAST, _DUAL), layer=lambda c, i: _relevance(c, "clrp1", stop_at=i)),
    Method("clrp2", "CLRP2", "Contrastive LRP, dual = the target's output weights negated",
           "relevance", "relevance", lambda c: _relevance(c, "clrp2"), (_SEED, _CONDITION, _BOX, _CONTRAST),
           layer=lambda c, i: _relevance(c, "clrp2", stop_at=i)),
    Method("sglrp", "SGLRP", "Softmax-gradient LRP (Iwana et al. 2019): seeded with the softmax gradient",
           "relevance", "softmax relevance", lambda c: _relevance(c, "sglrp"), (_CONDITION, _BOX),
           layer=lambda c, i: _relevance(c, "sglrp", stop_at=i)),
    Method("gradient", "Gradient", "Vanilla gradient of the target logit (Simonyan et al.)", "gradient", "sensitivity",
           lambda c: _gradient(c, GRADIENT), autograd_only=True),
    Method("gradient_x_input", "Gradient×Input", "Gradient times input", "gradient", "attribution",
           lambda c: _gradient(c, GRADIENT) * c.x, autograd_only=True),
    Method("deconvnet", "DeConvNet", "DeConvNet (Zeiler & Fergus): ReLUs pass the positive part of the upper signal",
           "gradient", "sensitivity", lambda c: _gradient(c, DECONVNET)),
    Method("guided_backprop", "Guided BP", "Guided backpropagation (Springenberg et al.)", "gradient", "sensitivity",
           lambda c: _gradient(c, GUIDED)),
    Method("gradcam", "Grad-CAM", "Grad-CAM (Selvaraju et al.) at the last convolutional feature map, upsampled",
           "cam", "cam", _gradcam,
           (Option("layer", None, "the feature map's layer (default: the last one every path goes through)"),
            Option("relu", True, "keep only the positive part of the CAM"),
            Option("interpolation", "bilinear", "how the CAM is upsampled to the input (a torch interpolation mode)"))),
    Method("integrated_gradients", "Integrated Gradients",
           "Integrated Gradients (Sundararajan et al.), zero baseline by default", "gradient", "attribution",
           _integrated_gradients,
           (Option("steps", 50, "points on the path", check=integer(1)),
            Option("baseline", None, "the path's start (default: zeros)"),
            Option("integration", "gausslegendre", "the quadrature (as captum's)",
                   choices=("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")),
            _BATCH), autograd_only=True),
    Method("smoothgrad", "SmoothGrad", "SmoothGrad (Smilkov et al.): gradient averaged over noisy copies", "gradient",
           "sensitivity", _smoothgrad,
           (Option("samples", 25, "noisy copies", check=integer(1)),
            Option("noise", 0.15, "noise standard deviation, as a share of each input's value range",
                   check=non_negative),
            Option("random_state", 0, "seed of the noise"), _BATCH), autograd_only=True),
):
    register_method(_m)
